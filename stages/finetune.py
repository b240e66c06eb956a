"""Stage finetune: train the dense part with BN on cached train features streamed from HDF5 in shuffled batches,
resumable from per-epoch checkpoints."""

from vggbn.runner import stage


def run(paths, params):
    """The trained dense part saved to `--out`; the last epoch's train and valid loss and accuracy, and the epochs
    trained again because a checkpoint failed its check."""
    import dataclasses

    from vggbn.numerics import models
    from vggbn.cluster import distribute
    from vggbn.numerics.feature_training import Checkpoints, TrainingPlan, train_on_features
    from vggbn.storage.hashing import file_md5
    from vggbn.storage.results import StageResult

    params = params.finetune
    recipe = {"model": file_md5(paths.model), "train": file_md5(paths.train), "valid": file_md5(paths.valid),
              "params": dataclasses.asdict(params)}
    trained = train_on_features(models.load_model_file(paths.model), TrainingPlan.from_section(params),
                                train_path=paths.train, valid_path=paths.valid,
                                checkpoints=Checkpoints(paths.work, recipe),
                                live_dir=paths.live)
    models.save_model(trained.model, paths.out)
    last = trained.history[-1]
    return StageResult({"train_loss": last["loss"], "train_accuracy": last["accuracy"],
                        "valid_loss": last["val_loss"], "valid_accuracy": last["val_accuracy"],
                        "epochs": len(trained.history),
                        "epochs_recomputed_corrupt": trained.epochs_recomputed_corrupt, **distribute.describe()})


if __name__ == "__main__":
    stage.main(__doc__, run, runs_model=True, model="the dense part with BN (.keras)", train="train features (HDF5)",
               valid="valid features (HDF5)", out="the fine-tuned dense part (.keras)",
               work="per-epoch checkpoints, outside the declared outputs",
               live="dvclive folder for the per-epoch curves", metrics="JSON with the last epoch's loss and accuracy")
