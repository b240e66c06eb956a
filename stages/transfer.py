"""Stage transfer: the 2017 notebook's `vgg_ft_bn`: a new softmax layer for a new task's classes, trained on the
fine-tuned BN dense part and, side by side, on the original dense part, across learning rates and seeds."""

from pathlib import Path

from vggbn.runner import stage


def run(paths, params):
    """New-task features (`transfer.root`'s images through the conv part), then the with/without-BN comparison;
    plot `accuracy`: accuracy against learning rate per start."""
    from vggbn.numerics import models
    from vggbn.cluster import distribute
    from vggbn.numerics.images import ImageInput
    from vggbn.numerics.transfer import TransferGrid, accuracy_tables, compare_transfer
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
    report = compare_transfer(starts, TransferGrid.from_section(params), train_path=out_paths["train"],
                              valid_path=out_paths["valid"], num_classes=len(classes), work_dir=paths.work)
    report["classes"] = classes
    report["train_mode"] = params.train
    report["features_recomputed_corrupt"] = recomputed_corrupt
    report.update(distribute.describe())
    return StageResult(report, {"accuracy": accuracy_tables(report)})


def transfer_features(*, conv, model_md5: str, listing: str | Path, inputs,
                      out_paths: dict[str, str], work_dir: str | Path) -> tuple[list[str], int]:
    """Conv features of every usable image of the new task's folder (`inputs.root`), through the conv_features
    code path (rows of the previous run reused, after their check). Returns the new task's class names (sorted
    folder names) in index order, and the rows made again because their reused or resumed bytes failed a check.
    """
    from vggbn.numerics.extract import Extraction, extract_split
    from vggbn.storage.features import FeatureRows
    from vggbn.storage.listing import read_listing
    from vggbn.storage.sampling import build_sample

    sample = build_sample(entries=read_listing(listing), root=inputs.root)
    recomputed_corrupt = 0
    for split, rows in (("train", sample.train), ("valid", sample.valid)):
        manifest = FeatureRows.of([r.path for r in rows], [r.label for r in rows], [r.md5 for r in rows])
        stats = extract_split(conv, inputs, manifest, Extraction(model_md5), out_paths[split], Path(work_dir) / split)
        recomputed_corrupt += stats["recomputed_corrupt"]
    return sample.classes, recomputed_corrupt


if __name__ == "__main__":
    stage.main(__doc__, run, runs_model=True, pretrained="the pretrained classifier (.keras)",
               finetuned="the fine-tuned dense part with BN (.keras)",
               cut_from="a feature file of the pipeline: where to cut", listing="listing of transfer.root",
               train_out="the new task's train features (HDF5)", valid_out="the new task's valid features (HDF5)",
               work="resumable work in progress of the features",
               metrics="JSON: accuracy and loss per learning rate, with and without BN",
               accuracy="folder: accuracy against learning rate, one CSV per start")
