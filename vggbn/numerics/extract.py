"""Run the conv part of a classifier over sampled images and cache its output in a feature file (the conv_features
stage and the transfer stage's new-task features), and check the split: the dense part on cached features equals the
whole model on the images."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import keras
import numpy as np

from vggbn.numerics import models
from vggbn.cluster import distribute
from vggbn.storage import features
from vggbn.storage.dvccache import previous_output
from vggbn.numerics.images import CHECK_IMAGES, ImageInput


class Extraction(NamedTuple):
    """How a conv part's features are made and stored: the model file's md5 (rows are reused only from a file made
    by the same model), the compute dtype, and the stored dtype."""
    model_md5: str
    compute: str = "float32"
    dtype: str = "float32"


def extract_split(conv: keras.Model, inputs: ImageInput, rows: features.FeatureRows, how: Extraction,
                  out_path: str | Path, work_dir: str | Path) -> dict:
    """Write `out_path` with the conv part's output for each of `rows` (paths relative to `inputs.root`).

    A chunk (the unit of work a killed run resumes from, and of the HDF5 file's layout) holds at most
    `inputs.batch_size` rows, and at most about 1 MiB (`features.chunk_rows_for`): a kill loses at most one batch.
    Rows are reused from the version of `out_path` that DVC's cache holds (`dvccache.previous_output`).
    """
    cut, size = conv.layers[-1].name, models.input_size(conv)
    row_shape = tuple(conv.output.shape[1:])
    recipe = features.FeatureRecipe(
        inputs={"model_md5": how.model_md5, "cut": cut, "size": list(size), "resize": inputs.resize,
                "preprocess": inputs.preprocess, "compute": how.compute},
        row_shape=row_shape, dtype=how.dtype, attrs={"cut": cut},
        chunk_rows=min(inputs.batch_size, features.chunk_rows_for(row_shape, how.dtype)),
        work={"replicas": distribute.replicas()})  # chunks of another replica count are not resumed
    computing = models.with_compute_dtype(conv, how.compute)
    predict = models.predictor(computing)

    def forward(x):  # one function for the whole pass: traced once per batch shape
        return computing(x, training=False)

    def extract(wanted: Sequence[int]):
        for flipped in (False, True):
            part = [rows.paths[row] for row in wanted if rows.flipped[row] == flipped]
            if not part:
                continue
            if distribute.multi_worker():  # each worker decodes its own rows of each batch; outputs travel
                batches = [part[i:i + inputs.batch_size] for i in range(0, len(part), inputs.batch_size)]
                for batch, mine in zip(batches, distribute.own_images(inputs, part, size, flipped)):
                    yield distribute.gather_shares(forward, distribute.shares(len(batch)), mine)
                continue
            for batch in inputs.dataset(part, size, flip=flipped):
                yield np.asarray(predict(batch), dtype=np.float32)

    def build(extract_rows):  # on the chief alone: it reads and writes the files
        return features.build_feature_file(out_path, rows, recipe, extract_rows, work_dir,
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
