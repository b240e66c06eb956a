"""Run the conv part of a classifier over sampled images and cache its output in a feature file; the
conv_features stage."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from vggbn import distribute, features, models
from vggbn.dvccache import previous_output
from vggbn.files import StageResult, file_md5
from vggbn.images import CHECK_IMAGES, ImageInput
from vggbn.manifest import read_classes, read_split


def extract_split(*, conv: keras.Model, model_md5: str, inputs: ImageInput, paths: Sequence[str],
                  labels: Sequence[int], md5s: Sequence[str], out_path: str | Path, work_dir: str | Path,
                  dtype: str = "float32", compute: str = "float32", flip: bool = False) -> dict:
    """Write `out_path` with the conv part's output for each manifest row (paths relative to `inputs.root`).

    With `flip`, every image also gets a row for its horizontally flipped copy (after all unflipped rows).
    A chunk (the unit of work a killed run resumes from, and of the HDF5 file's layout) holds at most
    `inputs.batch_size` rows, and at most about 1 MiB (`features.chunk_rows_for`): a kill loses at most one batch.
    Rows are reused from the version of `out_path` that DVC's cache holds (`dvccache.previous_output`).
    """
    cut = conv.layers[-1].name
    size = models.input_size(conv)
    recipe = {"model_md5": model_md5, "cut": cut, "size": list(size), "resize": inputs.resize,
              "preprocess": inputs.preprocess, "compute": compute}
    count = len(paths)
    copies = 2 if flip else 1
    row_shape = tuple(conv.output.shape[1:])
    computing = models.with_compute_dtype(conv, compute)
    predict = models.predictor(computing)

    def forward(x):  # one function for the whole pass: traced once per batch shape
        return computing(x, training=False)

    def extract(rows: Sequence[int]):
        for flipped in (False, True)[:copies]:
            part = [row % count for row in rows if (row >= count) == flipped]
            if not part:
                continue
            if distribute.multi_worker():  # each worker decodes its own rows of each batch; outputs travel
                batches = [part[i:i + inputs.batch_size] for i in range(0, len(part), inputs.batch_size)]
                own = distribute.own_images(inputs, [paths[i] for i in part], size, flipped)
                for batch, mine in zip(batches, own):
                    yield distribute.gather_shares(forward, distribute.shares(len(batch)), mine)
                continue
            for batch in inputs.dataset([paths[i] for i in part], size, flip=flipped):
                yield np.asarray(predict(batch), dtype=np.float32)

    def build(extract_rows):  # on the chief alone: it reads and writes the files
        return features.build_feature_file(
            out_path, paths=list(paths) * copies, labels=list(labels) * copies, md5s=list(md5s) * copies,
            flipped=[False] * count + [True] * count * (copies - 1), extract=extract_rows,
            row_shape=row_shape, dtype=dtype, work_dir=work_dir, feature_recipe=recipe, attrs={"cut": cut},
            chunk_rows=min(inputs.batch_size, features.chunk_rows_for(row_shape, dtype)),
            previous=previous_output(out_path), image_root=inputs.root)

    return distribute.led_by_chief(build, extract)


def check_split(*, model: keras.Model, cut: str | None, inputs: ImageInput, feature_path: str | Path,
                limit: int = CHECK_IMAGES) -> dict:
    """Largest difference between the whole model on the images and the dense part on their cached features.

    This proves the cached features and the split are right (the 2017 notebook checked it by hand). The chief
    alone runs it, in one process: it reads the file just written.
    """
    _, dense = models.split(model, cut)
    batch_size = inputs.batch_size
    with features.open_features(feature_path) as file:
        count = min(limit, file["features"].shape[0])
        cached = features.read_rows(feature_path, file["features"], 0, count)
        rel_paths = file["paths"].asstr()[:count]
    dataset = inputs.dataset(list(rel_paths), models.input_size(model))
    whole_model, dense_part = models.predictor(model, local=True), models.predictor(dense, local=True)
    whole = np.concatenate([whole_model(batch) for batch in dataset]) if count else np.zeros((0,))
    from_cache = np.concatenate([dense_part(cached[i:i + batch_size])
                                 for i in range(0, count, batch_size)]) if count else np.zeros((0,))
    worst = float(np.abs(whole - from_cache).max()) if count else 0.0
    return {"split_max_abs_diff": worst, "split_checked_images": int(count)}


def run_conv_features(*, model_path: str | Path, sample_dir: str | Path, inputs: ImageInput,
                      out_paths: dict[str, str], work_dir: str | Path, cut: str | None, dtype: str = "float32",
                      compute: str = "float32", flip: bool = False) -> StageResult:
    """The conv_features stage: a feature file per split (`out_paths`: split -> path); row counts and the split
    check. Labels in the files are the model's output indices (see `models.label_map`)."""
    model = models.load_model_file(model_path)
    conv, _ = models.split(model, cut)
    to_output = models.label_map(read_classes(sample_dir), model.output_shape[-1])
    model_md5 = file_md5(model_path)  # once: VGG16's file is 528 MB
    metrics = {}
    for split in ("train", "valid"):
        manifest = read_split(sample_dir, split)
        stats = extract_split(conv=conv, model_md5=model_md5, inputs=inputs, paths=manifest.paths,
                              labels=[to_output[label] for label in manifest.labels], md5s=manifest.md5s,
                              out_path=out_paths[split], work_dir=Path(work_dir) / split, dtype=dtype,
                              compute=compute, flip=flip and split == "train")
        metrics.update({f"{split}_{key}": value for key, value in stats.items()})
    if distribute.is_chief():
        metrics.update(check_split(model=model, cut=cut, inputs=inputs, feature_path=out_paths["valid"]))
    return StageResult({**metrics, **distribute.describe()})
