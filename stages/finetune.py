"""Stage finetune: train the dense part with BN on cached train features streamed from HDF5."""

from vggbn.runner import stage


def main():
    args = stage.arguments(__doc__, model="the dense part with BN (.keras)", train="train features (HDF5)",
                           valid="valid features (HDF5)", out="the fine-tuned dense part (.keras)",
                           work="per-epoch checkpoints, outside the declared outputs",
                           live="dvclive folder for the per-epoch curves",
                           metrics="JSON with the last epoch's loss and accuracy")
    params = stage.params()

    from vggbn.storage.files import write_result
    from vggbn.numerics.finetune import run_finetune

    result = run_finetune(model_path=args.model, train_path=args.train, valid_path=args.valid, out_path=args.out,
                          work_dir=args.work, live_dir=args.live, params=params.finetune)
    write_result(result, metrics=args.metrics)
    return result


if __name__ == "__main__":
    stage.run(main, runs_model=True)
