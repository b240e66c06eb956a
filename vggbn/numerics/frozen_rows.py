"""The frozen part's output, cached: a dense part's layers below its new head applied once to every row of a
feature file, written as a feature file of its own, so that a grid of head trainings reads them instead of
recomputing them each run."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from vggbn.cluster import distribute
from vggbn.numerics import models
from vggbn.storage import features


def cache_frozen_rows(frozen: keras.Model, *, source_path: str | Path, out_path: str | Path, work_dir: str | Path,
                      batch_size: int) -> None:
    """`frozen` (in inference) applied to every row of the feature file `source_path`, streamed a batch at a time
    into the feature file `out_path` (written atomically, as every feature file), with the source's labels,
    paths and HDF5 chunk rows: `features.shuffled_order` then visits the same rows in the same order in both."""
    source_path = Path(source_path)
    predict = models.predictor(frozen)
    with features.open_features(source_path) as file:
        data = file["features"]
        chunk_rows = (data.chunks or (1,))[0]
        labels = file["labels"][:].tolist()

        rows = features.FeatureRows(file["paths"].asstr()[:].tolist(), labels, file["md5"].asstr()[:].tolist(),
                                    file["flipped"][:].tolist())

        def extract(indices):
            for start in range(0, len(indices), batch_size):  # ascending rows, read in contiguous runs
                wanted = indices[start:start + batch_size]
                runs, first = [], 0
                for k in range(1, len(wanted) + 1):
                    if k == len(wanted) or wanted[k] != wanted[k - 1] + 1:
                        runs.append(features.read_rows(source_path, data, wanted[first], wanted[k - 1] + 1))
                        first = k
                yield predict(np.concatenate(runs))

        def build(extract_rows):  # on the chief alone: it reads and writes the files, the others compute
            recipe = features.FeatureRecipe(
                inputs={"frozen": frozen.name, "source": str(source_path)}, row_shape=frozen.output_shape[1:],
                chunk_rows=chunk_rows, work={"replicas": distribute.replicas()})
            return features.build_feature_file(out_path, rows, recipe, extract_rows, work_dir)

        distribute.led_by_chief(build, extract)
