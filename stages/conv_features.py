"""Stage conv_features: run the classifier up to the cut layer over the sampled images and cache its output in a
chunked HDF5 feature file per split (resumable, reusing what an earlier run computed); check that the dense part
on the cached features equals the whole model on the images."""

from pathlib import Path

from vggbn.runner import stage


def run(paths, params):
    """A feature file per split; row counts and the split check. Labels in the files are the model's output
    indices (see `models.label_map`)."""
    from vggbn.numerics import models
    from vggbn.cluster import distribute
    from vggbn.numerics.extract import Extraction, check_split, extract_split
    from vggbn.storage.features import FeatureRows
    from vggbn.numerics.images import ImageInput
    from vggbn.storage.hashing import file_md5
    from vggbn.storage.manifest import read_classes, read_split
    from vggbn.storage.results import StageResult

    inputs, features = ImageInput.from_params(params), params.features
    cut, dtype, compute, flip = features.cut, features.dtype, features.compute, features.flip
    out_paths = {"train": paths.train_out, "valid": paths.valid_out}
    model = models.load_model_file(paths.model)
    conv, _ = models.split(model, cut)
    to_output = models.label_map(read_classes(paths.sample), model.output_shape[-1])
    model_md5 = file_md5(paths.model)  # once: VGG16's file is 528 MB
    metrics = {}
    for split in ("train", "valid"):
        manifest = read_split(paths.sample, split)
        rows = FeatureRows.of(manifest.paths, [to_output[label] for label in manifest.labels], manifest.md5s,
                              flip=flip and split == "train")
        stats = extract_split(conv, inputs, rows, Extraction(model_md5, compute, dtype), out_paths[split],
                              Path(paths.work) / split)
        metrics.update({f"{split}_{key}": value for key, value in stats.items()})
    if distribute.is_chief():
        metrics.update(check_split(model=model, cut=cut, inputs=inputs, feature_path=out_paths["valid"]))
    return StageResult({**metrics, **distribute.describe()})


if __name__ == "__main__":
    stage.main(__doc__, run, runs_model=True, model="the pretrained classifier (.keras)",
               sample="folder with the train.tsv and valid.tsv manifests",
               train_out="train features to write (HDF5)", valid_out="valid features to write (HDF5)",
               work="resumable work in progress, outside the declared outputs",
               metrics="JSON with row counts and the split check")
