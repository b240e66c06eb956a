"""Cached conv features in chunked HDF5: written in a streaming way, resumable, reusable, streamed back shuffled.

A feature file holds `features` (N, h, w, c), `labels` (N,), `paths` (N,), `md5` (N,) and `flipped` (N,), and
in its attributes the recipe that produced it. Work in progress lives in a work folder outside DVC's declared
outputs (DVC deletes those before a stage runs): one `.npy` file per completed chunk, renamed into place when
whole, so a killed run resumes at the last completed chunk. The finished file is only renamed into place at the very end.
After a run, the finished file is also kept (hard-linked) in the work folder as the previous run's: rows whose
path, content hash and flip are unchanged are copied from it instead of recomputed. numpy and h5py only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import h5py
import numpy as np

from vggbn import VggbnError, console
from vggbn.atomic import atomic_path
from vggbn.files import prepare_work

log = logging.getLogger(__name__)

TARGET_CHUNK_BYTES = 1 << 20  # HDF5 chunks of about 1 MiB read fast both sequentially and by blocks
STRING = h5py.string_dtype("utf-8")


class FeatureFileError(VggbnError):
    pass


def chunk_rows_for(row_shape: Sequence[int], dtype) -> int:
    row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
    return max(1, TARGET_CHUNK_BYTES // max(1, row_bytes))


def _save_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


class _Previous:
    """Rows of the previous run's file, found by (path, md5), if it was made by the same feature recipe."""

    def __init__(self, path: Path, feature_recipe: dict):
        self.file, self.index = None, {}
        if not path.exists():
            return
        try:
            file = h5py.File(path, "r")
        except OSError:
            return
        if json.loads(file.attrs.get("feature_recipe", "null")) != feature_recipe:
            file.close()
            return
        self.file = file
        paths, md5s = file["paths"].asstr()[:], file["md5"].asstr()[:]
        flipped = file["flipped"][:] if "flipped" in file else np.zeros(len(paths), dtype=bool)
        self.index = {(p, m, bool(f)): row for row, (p, m, f) in enumerate(zip(paths, md5s, flipped))}

    def row(self, key) -> int | None:
        return self.index.get(key)

    def close(self):
        if self.file is not None:
            self.file.close()


def build_feature_file(out_path: str | Path, *, paths: Sequence[str], labels: Sequence[int], md5s: Sequence[str],
                       extract: Callable[[Sequence[int]], Iterable[np.ndarray]], row_shape: Sequence[int],
                       dtype: str, work_dir: str | Path, feature_recipe: dict, flipped: Sequence[bool] | None = None,
                       chunk_rows: int | None = None, attrs: dict | None = None) -> dict:
    """Write the feature file for the manifest rows, computing only what no earlier run left behind.

    Args:
        paths, labels, md5s: the manifest, one entry per row of the file.
        flipped: per row, whether it holds the horizontally flipped image (default: none are).
        extract: given row indices (ascending), yields feature batches for exactly those rows, in order.
        row_shape, dtype: shape of one row's features and the dtype to store (float32 or float16).
        work_dir: where chunks of an interrupted run and the previous run's file are kept.
        feature_recipe: everything that determines a row's features besides its image (model hash, cut, size,
            resize, preprocessing, compute dtype): rows are reused only from a file made with the same recipe.
        attrs: extra attributes to store in the file.
    Returns: counts of rows computed, reused from the previous run, and resumed from chunks.
    """
    out_path, work_dir = Path(out_path), Path(work_dir)
    count = len(paths)
    flipped = [bool(f) for f in flipped] if flipped is not None else [False] * count
    if not (len(labels) == len(md5s) == len(flipped) == count):
        raise ValueError("paths, labels, md5s and flipped must have one entry per row")
    chunk_rows = chunk_rows or chunk_rows_for(row_shape, dtype)
    manifest_key = [list(paths), [int(x) for x in labels], list(md5s), flipped]
    prepare_work(work_dir, {"feature_recipe": feature_recipe, "manifest": manifest_key, "dtype": dtype,
                            "chunk_rows": chunk_rows}, stale=("chunk-*",))
    previous = _Previous(work_dir / "previous.h5", feature_recipe)
    chunks = [(start, min(start + chunk_rows, count)) for start in range(0, count, chunk_rows)]
    pending = [(i, span) for i, span in enumerate(chunks) if not (work_dir / f"chunk-{i:06d}.npy").exists()]
    reuse = {row: previous.row((paths[row], md5s[row], flipped[row])) for _, (a, b) in pending for row in range(a, b)}
    to_compute = [row for row, old in reuse.items() if old is None]
    stats = {"computed": len(to_compute), "reused": len(reuse) - len(to_compute), "resumed": count - len(reuse)}
    log.debug("%s: %d rows: %d to compute, %d reused from the previous run, %d resumed from chunks",
              out_path.name, count, *stats.values())
    try:
        computed = _rows(extract(to_compute) if to_compute else iter(()))
        with console.progress(len(to_compute), f"features {out_path.name}", "img") as bar:
            for i, (a, b) in pending:
                block = np.empty((b - a, *row_shape), dtype=dtype)
                for row in range(a, b):
                    if reuse[row] is None:
                        block[row - a] = next(computed)
                        bar.update(1)
                    else:
                        block[row - a] = previous.file["features"][reuse[row]]
                _save_atomic(work_dir / f"chunk-{i:06d}.npy", block)
                log.debug("%s: chunk %d (rows %d-%d) written", out_path.name, i, a, b - 1)
        if next(computed, None) is not None:
            raise ValueError("extract yielded more rows than asked for")
    finally:
        previous.close()
    _assemble(out_path, work_dir, chunks, paths, labels, md5s, flipped, row_shape, dtype, chunk_rows,
              {**(attrs or {}), "feature_recipe": json.dumps(feature_recipe, sort_keys=True)})
    return stats


def _rows(batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for batch in batches:
        yield from batch


def _assemble(out_path, work_dir, chunks, paths, labels, md5s, flipped, row_shape, dtype, chunk_rows, attrs) -> None:
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as file:
            data = file.create_dataset("features", (len(paths), *row_shape), dtype=dtype,
                                       chunks=(min(chunk_rows, max(1, len(paths))), *row_shape))
            for i, (a, b) in enumerate(chunks):
                data[a:b] = np.load(work_dir / f"chunk-{i:06d}.npy", allow_pickle=False)
            file.create_dataset("labels", data=np.asarray(labels, dtype=np.int32))
            file.create_dataset("paths", data=list(paths), dtype=STRING)
            file.create_dataset("md5", data=list(md5s), dtype=STRING)
            file.create_dataset("flipped", data=np.asarray(flipped, dtype=bool))
            for key, value in attrs.items():
                file.attrs[key] = value
    # Keep the finished file as the next run's source of reusable rows, then drop the chunks.
    previous = work_dir / "previous.h5"
    previous.unlink(missing_ok=True)
    try:
        os.link(out_path, previous)
    except OSError:
        shutil.copyfile(out_path, previous)
    for child in work_dir.glob("chunk-*"):
        child.unlink()


def open_features(path: str | Path) -> h5py.File:
    """Open a feature file for reading; a missing or foreign file is a one-line error naming it."""
    path = Path(path)
    try:
        file = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as error:
        raise FeatureFileError(f"{path}: cannot open feature file: {error}") from None
    missing = {"features", "labels"} - set(file)
    if missing:
        file.close()
        raise FeatureFileError(f"{path}: not a feature file: no {', '.join(sorted(missing))} dataset")
    return file


def iter_batches(path: str | Path, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features float32, labels) in file order, batch by batch: memory stays at one batch."""
    with open_features(path) as file:
        features, labels = file["features"], file["labels"]
        for start in range(0, features.shape[0], batch_size):
            yield features[start:start + batch_size].astype(np.float32), labels[start:start + batch_size]


def shuffled_batches(path: str | Path, batch_size: int, buffer_rows: int, seed: int,
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every row once, in shuffled batches, reading contiguous blocks: random single-row reads are slow.

    Blocks of whole HDF5 chunks are visited in a seeded random order and gathered into a buffer of about
    `buffer_rows` rows that is shuffled row by row; memory stays at the buffer.
    """
    rng = np.random.default_rng(seed)
    with open_features(path) as file:
        features, labels = file["features"], file["labels"]
        count = features.shape[0]
        chunk = features.chunks[0] if features.chunks else 1
        block = max(chunk, (min(batch_size, buffer_rows) // chunk) * chunk)
        starts = rng.permutation(np.arange(0, count, block))
        carry_x = np.empty((0, *features.shape[1:]), dtype=np.float32)
        carry_y = np.empty((0,), dtype=labels.dtype)
        for i in range(0, len(starts), max(1, buffer_rows // block)):
            group = starts[i:i + max(1, buffer_rows // block)]
            xs = [carry_x] + [features[s:s + block].astype(np.float32) for s in group]
            ys = [carry_y] + [labels[s:s + block] for s in group]
            x, y = np.concatenate(xs), np.concatenate(ys)
            order = rng.permutation(len(y))
            x, y = x[order], y[order]
            full = (len(y) // batch_size) * batch_size
            for start in range(0, full, batch_size):
                yield x[start:start + batch_size], y[start:start + batch_size]
            carry_x, carry_y = x[full:], y[full:]
        if len(carry_y):
            yield carry_x, carry_y


def feature_cut(path: str | Path) -> str:
    """The layer a feature file's features were cut at: later stages split the classifier there too."""
    with open_features(path) as file:
        return str(file.attrs["cut"])
