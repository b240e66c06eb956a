"""Stage transfer: the 2017 notebook's `vgg_ft_bn`: a new softmax layer for a new task's classes, trained on the
fine-tuned BN dense part and, side by side, on the original dense part, across learning rates and seeds."""

from vggbn.runner import stage


def run(paths, params):
    """New-task features (`transfer.root`'s images through the conv part), then the with/without-BN comparison;
    plot `accuracy`: accuracy against learning rate per start."""
    from vggbn.numerics import models
    from vggbn.cluster import distribute
    from vggbn.numerics.images import ImageInput
    from vggbn.numerics.new_task import accuracy_tables, compare_transfer, transfer_features
    from vggbn.storage import features
    from vggbn.storage.hashing import file_md5
    from vggbn.storage.results import StageResult

    inputs = ImageInput.from_params(params, root=params.transfer.root)
    out_paths = {"train": paths.train_out, "valid": paths.valid_out}
    params = params.transfer
    conv, original_dense = models.split(models.load_model_file(paths.pretrained), features.feature_cut(paths.cut_from))
    classes, recomputed_corrupt = transfer_features(conv=conv, model_md5=file_md5(paths.pretrained), listing=paths.listing,
                                                    inputs=inputs, out_paths=out_paths, work_dir=paths.work)
    starts = {"with_bn": models.load_model_file(paths.finetuned), "without_bn": original_dense}
    report = compare_transfer(starts, train_path=out_paths["train"], valid_path=out_paths["valid"],
                              num_classes=len(classes), train_mode=params.train, lrs=params.lrs,
                              seeds=params.seeds, epochs=params.epochs, batch_size=params.batch_size,
                              work_dir=paths.work)
    report["classes"] = classes
    report["train_mode"] = params.train
    report["features_recomputed_corrupt"] = recomputed_corrupt
    report.update(distribute.describe())
    return StageResult(report, {"accuracy": accuracy_tables(report)})


if __name__ == "__main__":
    stage.main(__doc__, run, runs_model=True, pretrained="the pretrained classifier (.keras)",
               finetuned="the fine-tuned dense part with BN (.keras)",
               cut_from="a feature file of the pipeline: where to cut", listing="listing of transfer.root",
               train_out="the new task's train features (HDF5)", valid_out="the new task's valid features (HDF5)",
               work="resumable work in progress of the features",
               metrics="JSON: accuracy and loss per learning rate, with and without BN",
               accuracy="folder: accuracy against learning rate, one CSV per start")
