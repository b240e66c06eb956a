"""Cached conv features in chunked HDF5: written in a streaming way, resumable, reusable, streamed back shuffled.

A feature file holds `features` (N, h, w, c), `labels` (N,), `paths` (N,), `md5` (N,), `flipped` (N,) and
`chunk_digests` (one per HDF5 chunk of `features`: the digest of its rows' bytes), and in its attributes the recipe
that produced it.

Nothing is reused without being checked. Work in progress lives in a work folder outside DVC's declared outputs
(DVC deletes those before a stage runs): one `.npy` file per completed chunk, renamed into place when whole and
named with the digest of its rows, so a killed run resumes at the last completed chunk and a resumed chunk whose
bytes changed since is recomputed. Rows whose path, content hash and flip are unchanged are copied from the
previous run's file, which DVC's cache keeps (`vggbn.storage.dvccache`: no second copy here), one whole chunk at a time,
each checked against its digest; a chunk that fails is recomputed. Either failure is a warning naming the file and
counted in the returned `recomputed_corrupt`; the result equals a clean run's. The digests are checked where bytes
are reused, not on every read: a stage reading a feature file DVC has just checked out pays nothing (HDF5's own
Fletcher-32 filter would have halved the read rate of fine-tuning's stream). numpy and h5py only.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import h5py
import numpy as np

from vggbn import VggbnError
from vggbn import console
from vggbn.storage.atomic import atomic_path, remove_stale_partials, require_space
from vggbn.storage.hashing import bytes_digest
from vggbn.storage.workdir import prepare_work

log = logging.getLogger(__name__)

TARGET_CHUNK_BYTES = 1 << 20  # HDF5 chunks of about 1 MiB read fast both sequentially and by blocks
STRING = h5py.string_dtype("utf-8")
CHUNK_FILE = re.compile(r"^chunk-(\d{6})-([0-9a-f]{32})\.npy$")  # chunk-<index>-<digest of its rows>.npy
DIGEST = np.dtype("S32")  # a `bytes_digest` in hex
COMPUTED, REUSED, RESUMED = 1, 2, 3  # where a row of a new file came from


class FeatureFileError(VggbnError):
    pass


class NonFiniteFeatures(FeatureFileError):
    pass


def chunk_rows_for(row_shape: Sequence[int], dtype) -> int:
    row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
    return max(1, TARGET_CHUNK_BYTES // max(1, row_bytes))


def _rows_digest(block: np.ndarray) -> str:
    return bytes_digest(np.ascontiguousarray(block))


def _save_chunk(work_dir: Path, index: int, block: np.ndarray, needed: int) -> Path:
    path = work_dir / f"chunk-{index:06d}-{_rows_digest(block)}.npy"
    with atomic_path(path, needed=needed, sweep=False) as tmp:  # the work folder is swept once, at the start
        with open(tmp, "wb") as handle:
            np.save(handle, block, allow_pickle=False)
    return path


def _load_chunk(path: Path, shape: tuple, dtype) -> np.ndarray | None:
    """The chunk's rows if they hold what is expected and still have the digest in its name, else None."""
    match = CHUNK_FILE.match(path.name)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if match is None or array.shape != shape or array.dtype != np.dtype(dtype) or _rows_digest(array) != match.group(2):
        return None
    return array


def _resumable_chunks(work_dir: Path) -> dict[int, Path]:
    found = {}
    for path in sorted(work_dir.glob("chunk-*")):
        match = CHUNK_FILE.match(path.name)
        if match is None or int(match.group(1)) in found:
            path.unlink()  # not a name we write, or a second one for the same chunk
        else:
            found[int(match.group(1))] = path
    return found


class _Previous:
    """Rows of the previous run's file, found by (path, md5, flipped), if it was made by the same feature recipe.

    Rows are read one whole HDF5 chunk at a time, each checked against its digest in `chunk_digests`, and a chunk
    that fails (or cannot be read) gives no rows: they are recomputed. A file that is damaged beyond that (its
    size is not what dvc.lock records, it cannot be opened) gives none. Either way the warning names the file, and
    `close` removes it from DVC's cache.
    """

    def __init__(self, source, feature_recipe: dict, row_shape: tuple, dtype: str):
        self.source, self.file, self.index, self.bad_chunks, self.damage = source, None, {}, set(), None
        self._block = (None, None)
        if source is None:
            return
        path = Path(source.path)
        size = path.stat().st_size
        if source.size is not None and size != source.size:
            self._damaged(f"{size} bytes where dvc.lock records {source.size}")
            return
        try:
            self.file = h5py.File(path, "r")
            recipe = json.loads(self.file.attrs.get("feature_recipe", "null"))
            if recipe != feature_recipe:
                return self.close()
            self.data = self.file["features"]
            self.digests = self.file["chunk_digests"][:]
            if self.data.shape[1:] != tuple(row_shape) or self.data.dtype != np.dtype(dtype):
                return self.close()
            paths, md5s = self.file["paths"].asstr()[:], self.file["md5"].asstr()[:]
            flipped = self.file["flipped"][:]
            if not len(paths) == len(md5s) == len(flipped) == self.data.shape[0]:
                raise ValueError("datasets of different lengths")
            if len(self.digests) != -(-self.data.shape[0] // self.data.chunks[0]):
                raise ValueError("not one digest per chunk")
        except (OSError, RuntimeError, KeyError, ValueError, TypeError, UnicodeDecodeError) as error:
            self._damaged(f"unreadable ({str(error).splitlines()[0] if str(error) else type(error).__name__})")
            return
        self.chunk_rows = self.data.chunks[0]
        self.index = {(p, m, bool(f)): row for row, (p, m, f) in enumerate(zip(paths, md5s, flipped))}

    def _damaged(self, reason: str) -> None:
        log.warning("%s: the previous run's %s is damaged (%s): nothing reused from it, every row recomputed",
                    self.source.path, self.source.out, reason)
        self.damage = reason
        self.close()

    def row(self, key) -> int | None:
        """The previous file's row for `key`, unless it is missing or its chunk already failed its check."""
        row = self.index.get(key)
        return None if row is None or row // self.chunk_rows in self.bad_chunks else row

    def read(self, row: int) -> np.ndarray | None:
        """Row `row` of the previous file, or None if its chunk fails its check."""
        chunk = row // self.chunk_rows
        if chunk in self.bad_chunks:
            return None
        if self._block[0] != chunk:
            start = chunk * self.chunk_rows
            try:
                block = self.data[start:start + self.chunk_rows]
            except (OSError, RuntimeError):
                block = None
            if block is None or _rows_digest(block).encode() != self.digests[chunk]:
                self.bad_chunks.add(chunk)
                log.warning("%s: rows %d-%d of the previous run's %s fail their check: recomputed",
                            self.source.path, start, min(start + self.chunk_rows, self.data.shape[0]) - 1,
                            self.source.out)
                return None
            self._block = (chunk, block)
        return self._block[1][row - chunk * self.chunk_rows]

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file, self.index = None, {}
        if self.source is not None and (self.damage or self.bad_chunks):
            self.source.discard(self.damage or f"{len(self.bad_chunks)} chunks fail their check")
            self.source = None


@dataclass(frozen=True)
class FeatureRows:
    """A feature file's manifest: per row, its image's path (relative to the image root), label and md5, and whether
    the row holds the image's horizontally flipped copy."""
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    md5s: tuple[str, ...]
    flipped: tuple[bool, ...] = ()

    def __post_init__(self):
        flipped = self.flipped or (False,) * len(self.paths)
        object.__setattr__(self, "paths", tuple(self.paths))
        object.__setattr__(self, "labels", tuple(int(label) for label in self.labels))
        object.__setattr__(self, "md5s", tuple(self.md5s))
        object.__setattr__(self, "flipped", tuple(bool(f) for f in flipped))
        if not len(self.labels) == len(self.md5s) == len(self.flipped) == len(self.paths):
            raise ValueError("paths, labels, md5s and flipped must have one entry per row")

    @classmethod
    def of(cls, paths: Sequence[str], labels: Sequence[int], md5s: Sequence[str], flip: bool = False) -> FeatureRows:
        """One row per image, and with `flip` a second for each image's flipped copy, after all unflipped rows."""
        copies = 2 if flip else 1
        return cls(list(paths) * copies, list(labels) * copies, list(md5s) * copies,
                   [False] * len(paths) + [True] * len(paths) * (copies - 1))

    def __len__(self) -> int:
        return len(self.paths)

    def key(self) -> list[tuple[str, str, bool]]:
        """The row's identity for reuse: (path, md5, flipped), by row."""
        return list(zip(self.paths, self.md5s, self.flipped))

    def image(self, row: int, image_root: str | None) -> str:
        """Row `row`'s image as a message names it."""
        image = str(Path(image_root) / self.paths[row]) if image_root is not None else self.paths[row]
        return image + (" (flipped)" if self.flipped[row] else "")


@dataclass(frozen=True)
class FeatureRecipe:
    """Everything besides its rows' images that decides a feature file's bytes: `inputs`, what makes a row's
    features (model hash, cut, size, resize, preprocessing, compute dtype: rows are reused only from a file made
    with the same); the stored row shape and dtype (float32 or float16); the rows a chunk holds (the unit of work a
    killed run resumes from, and of the HDF5 layout; None: about 1 MiB); extra file attributes; and `work`, what
    else changes a chunk's bytes (a pass's replica count: sums in another order), so that a resume under another
    recomputes its chunks instead of mixing them."""
    inputs: dict
    row_shape: tuple[int, ...]
    dtype: str = "float32"
    chunk_rows: int | None = None
    attrs: dict = field(default_factory=dict)
    work: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "row_shape", tuple(int(n) for n in self.row_shape))
        object.__setattr__(self, "chunk_rows", self.chunk_rows or chunk_rows_for(self.row_shape, self.dtype))
        object.__setattr__(self, "attrs", dict(self.attrs or {}))
        object.__setattr__(self, "work", dict(self.work or {}))

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape)) * np.dtype(self.dtype).itemsize


def build_feature_file(out_path: str | Path, rows: FeatureRows, recipe: FeatureRecipe,
                       extract: Callable[[Sequence[int]], Iterable[np.ndarray]], work_dir: str | Path,
                       previous=None, image_root: str | None = None) -> dict:
    """Write the feature file for `rows`, made by `recipe`, computing only what no earlier run left behind intact.

    Args:
        extract: given row indices (ascending), yields feature batches for exactly those rows, in order.
        work_dir: where chunks of an interrupted run are kept.
        previous: the previous run's file to reuse rows from: an object with `path`, `out` (the output's name),
            `size` (bytes expected, or None) and `discard(reason)` (drop it, found damaged), such as
            `vggbn.storage.dvccache.previous_output(out_path)`; None: reuse nothing.
        image_root: the folder the rows' paths are relative to, to name an image whose features are not finite.
    Returns: rows computed now, reused from the previous run, resumed from chunks, and `recomputed_corrupt`: rows
        whose reused or resumed bytes failed their check and were made again (also counted where they came from).
    Raises: NonFiniteFeatures naming the first image whose features hold NaN or infinity.
    """
    out_path, work_dir = Path(out_path), Path(work_dir)
    manifest_key = [list(rows.paths), list(rows.labels), list(rows.md5s), list(rows.flipped)]
    prepare_work(work_dir, {"feature_recipe": recipe.inputs, "manifest": manifest_key, "dtype": recipe.dtype,
                            "chunk_rows": recipe.chunk_rows, **recipe.work}, stale=("chunk-*",))
    build = _Build(out_path, rows, recipe, work_dir, _Previous(previous, recipe.inputs, recipe.row_shape,
                                                              recipe.dtype))
    try:
        build.write(extract, image_root)
    finally:
        build.old.close()
    for child in work_dir.glob("chunk-*"):
        child.unlink()
    remove_stale_partials(work_dir, everything=True)
    stats = {"computed": int((build.source == COMPUTED).sum()), "reused": int((build.source == REUSED).sum()),
             "resumed": int((build.source == RESUMED).sum()), "recomputed_corrupt": int(build.corrupt.sum())}
    if stats["recomputed_corrupt"]:
        log.warning("%s: %d rows failed their check and were made again", out_path, stats["recomputed_corrupt"])
    return stats


class _Build:
    """One writing of a feature file: its chunks, where each row came from, and the rounds that make them."""

    def __init__(self, out_path: Path, rows: FeatureRows, recipe: FeatureRecipe, work_dir: Path, old: _Previous):
        self.out_path, self.rows, self.recipe, self.work_dir, self.old = out_path, rows, recipe, work_dir, old
        count, step = len(rows), recipe.chunk_rows
        self.chunks = [(start, min(start + step, count)) for start in range(0, count, step)]
        self.resumable = _resumable_chunks(work_dir)
        self.source = np.zeros(count, dtype=np.int8)  # COMPUTED, REUSED or RESUMED, once the row is in the file
        self.corrupt = np.zeros(count, dtype=bool)  # rows whose reused or resumed bytes failed their check

    def write(self, extract, image_root) -> None:
        count, row_bytes, chunks = len(self.rows), self.recipe.row_bytes, self.chunks
        needed = count * (row_bytes + 100) + (1 << 16)  # rows, their paths and hashes, HDF5's bookkeeping
        _require_space(self.out_path, needed, self.work_dir, sum(b - a for i, (a, b) in enumerate(chunks)
                                                                 if i not in self.resumable) * row_bytes)
        attrs = {**self.recipe.attrs, "feature_recipe": json.dumps(self.recipe.inputs, sort_keys=True)}
        with atomic_path(self.out_path, needed=needed) as tmp:
            # Rounds: make the missing chunks, then copy every chunk in, in order (HDF5 has the file open only then,
            # so a disk filling up while chunks are made fails cleanly). A chunk failing its check is made again and
            # the file written anew, so that its bytes are a clean run's, not only its rows.
            todo, fresh = list(range(len(chunks))), set()
            while todo:
                written = self.fill([i for i in todo if i not in self.resumable], extract, image_root)
                self.resumable.update(written)
                fresh |= set(written)
                with h5py.File(tmp, "w") as file:
                    _create_datasets(file, self.rows, self.recipe, attrs)
                    todo = self.assemble(file, list(range(len(chunks))), fresh)

    def fill(self, missing: list[int], extract, image_root) -> dict[int, Path]:
        """Chunk files for the `missing` chunks, from the previous file where it holds a row intact, else computed.
        A chunk with a row the previous file fails to give is left out: the caller tries it again."""
        keys, chunks, old = self.rows.key(), self.chunks, self.old
        plan = {row: old.row(keys[row]) for i in missing for row in range(*chunks[i])}
        to_compute = [row for row, old_row in plan.items() if old_row is None]
        log.debug("%s: %d rows: %d to compute, %d to reuse from the previous run, %d in chunks to resume",
                  self.out_path.name, len(self.rows), len(to_compute), len(plan) - len(to_compute),
                  sum(b - a for i, (a, b) in enumerate(chunks) if i in self.resumable))
        computed = _rows(extract(to_compute) if to_compute else iter(()))
        written = {}
        left = len(plan) * self.recipe.row_bytes  # what the chunks still to write need on disk
        with console.progress(len(to_compute), f"features {self.out_path.name}", "img") as bar:
            for i in missing:
                block, complete = self._block(chunks[i], plan, computed, image_root, bar)
                if complete:
                    written[i] = _save_chunk(self.work_dir, i, block, left)
                    log.debug("%s: chunk %d (rows %d-%d) written", self.out_path.name, i, *chunks[i])
                left -= (chunks[i][1] - chunks[i][0]) * self.recipe.row_bytes
        if next(computed, None) is not None:
            raise ValueError("extract yielded more rows than asked for")
        return written

    def _block(self, chunk, plan, computed, image_root, bar) -> tuple[np.ndarray, bool]:
        """One chunk's rows, computed or reused; and whether every row of it could be had."""
        (a, b), dtype = chunk, self.recipe.dtype
        block, complete = np.empty((b - a, *self.recipe.row_shape), dtype=dtype), True
        for row in range(a, b):
            if plan[row] is None:
                values = next(computed, None)
                if values is None:
                    raise ValueError("extract yielded fewer rows than asked for")
                with np.errstate(over="ignore"):  # a float16 overflow is reported just below
                    block[row - a] = values
                _check_finite(block[row - a], values, self.rows.image(row, image_root), dtype)
                self.source[row] = COMPUTED
                bar.update(1)
            elif (values := self.old.read(plan[row])) is not None:
                block[row - a], self.source[row] = values, REUSED
            else:
                self.corrupt[row], complete = True, False
        return block, complete

    def assemble(self, file: h5py.File, todo: list[int], fresh: set[int]) -> list[int]:
        """Copy the chunks `todo` into the file, each checked against its digest; the ones to make again."""
        again, resumable = [], self.resumable
        for i in todo:
            a, b = self.chunks[i]
            block = _load_chunk(resumable[i], (b - a, *self.recipe.row_shape), self.recipe.dtype) \
                if i in resumable else None
            if block is not None:
                file["features"][a:b] = block
                file["chunk_digests"][i] = CHUNK_FILE.match(resumable[i].name).group(2)
                self.source[a:b] = self.source[a:b] if i in fresh else RESUMED
                continue
            again.append(i)
            if i not in resumable:
                continue  # a reused row's chunk failed its check: recomputed on the next round
            if i in fresh:
                raise FeatureFileError(f"{resumable[i]}: a chunk written moments ago reads back different: the disk "
                                       "(or memory) is failing")
            log.warning("%s: a chunk of an interrupted run fails its check (rows %d-%d): recomputed",
                        resumable[i], a, b - 1)
            resumable.pop(i).unlink(missing_ok=True)
            self.corrupt[a:b] = True
        return again


def _require_space(out_path: Path, file_bytes: int, work_dir: Path, chunk_bytes: int) -> None:
    """Fail before any work if the chunks still to write and the finished file (both on disk at the end) cannot
    fit. A disk that fills up later all the same (others write to it too) stops the run at the chunk being
    written, and the rerun resumes after the completed ones."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.parent.stat().st_dev == work_dir.stat().st_dev:
        require_space(work_dir / "chunk-*.npy", chunk_bytes + file_bytes)
    else:
        require_space(work_dir / "chunk-*.npy", chunk_bytes)
        require_space(out_path, file_bytes)


def _check_finite(stored: np.ndarray, computed: np.ndarray, image: str, dtype) -> None:
    """Stop at the first image whose features are not finite, naming it, before anything downstream uses them."""
    if np.isfinite(stored).all():
        return
    if np.isfinite(computed).all():
        raise NonFiniteFeatures(f"{image}: its features reach {np.abs(computed).max():.4g}, beyond what "
                                f"features.dtype {dtype} can hold; store float32")
    kind = "NaN" if np.isnan(computed).any() else "infinite values"
    raise NonFiniteFeatures(f"{image}: the conv part gives {kind} for this image: is the model file broken "
                            "(NaN or huge weights), or the image one it cannot handle?")


def _rows(batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for batch in batches:
        yield from batch


def _create_datasets(file, rows: FeatureRows, recipe: FeatureRecipe, attrs: dict) -> h5py.Dataset:
    count, chunk_rows, row_shape = len(rows), recipe.chunk_rows, recipe.row_shape
    data = file.create_dataset("features", (count, *row_shape), dtype=recipe.dtype,
                               chunks=(min(chunk_rows, max(1, count)), *row_shape))
    file.create_dataset("chunk_digests", (-(-count // chunk_rows),), dtype=DIGEST)
    file.create_dataset("labels", data=np.asarray(rows.labels, dtype=np.int32))
    file.create_dataset("paths", data=list(rows.paths), dtype=STRING)
    file.create_dataset("md5", data=list(rows.md5s), dtype=STRING)
    file.create_dataset("flipped", data=np.asarray(rows.flipped, dtype=bool))
    for key, value in attrs.items():
        file.attrs[key] = value
    return data


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


def read_rows(path: str | Path, features: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """Rows `start:stop` of a feature file's `features` as float32; rows that cannot be read (a truncated file)
    are a one-line error naming the file and the rows."""
    try:
        return features[start:stop].astype(np.float32)
    except (OSError, RuntimeError) as error:
        raise FeatureFileError(f"{path}: rows {start}-{min(stop, features.shape[0]) - 1} cannot be read ("
                               f"{str(error).splitlines()[0]}): the file is damaged; `dvc checkout {path}` restores "
                               "it from DVC's cache, or rerun the stage that wrote it with `dvc repro -f`") from None


def iter_batches(path: str | Path, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features float32, labels) in file order, batch by batch: memory stays at one batch."""
    return ((x, y) for x, y, _ in iter_shares(path, batch_size, lambda count: slice(0, count)))


def iter_shares(path: str | Path, batch_size: int, share: Callable[[int], slice]
                ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """`iter_batches`, each batch only the rows `share(batch's row count)` of it (this worker's, under a multi-worker
    strategy): (features float32, labels, the batch's row count). Only those rows are read."""
    with open_features(path) as file:
        features, labels = file["features"], file["labels"]
        for start in range(0, features.shape[0], batch_size):
            count = min(batch_size, features.shape[0] - start)
            mine = share(count)
            first, stop = start + mine.start, start + mine.stop
            yield read_rows(path, features, first, stop), labels[first:stop], count


def shuffled_order(count: int, chunk: int, batch_size: int, buffer_rows: int, rng: np.random.Generator,
                 labels: h5py.Dataset | np.ndarray) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """The one shuffled order of a feature file's `count` rows (the feed's, and every reference's), from `rng`, a
    shuffle buffer at a time: blocks of whole chunks of `chunk` rows in a random order, gathered about `buffer_rows`
    rows at a time, each buffer shuffled row by row; what does not fill a last batch is carried into the next buffer.
    For each buffer, the (row numbers, their labels) of the batches it completes (the last buffer: what remains)."""
    block = max(chunk, (min(batch_size, buffer_rows) // chunk) * chunk)
    starts = rng.permutation(np.arange(0, count, block))
    per_buffer = max(1, buffer_rows // block)
    carry_rows = np.empty((0,), dtype=np.int64)
    carry_labels = np.empty((0,), dtype=labels.dtype)
    for i in range(0, len(starts), per_buffer):
        group = starts[i:i + per_buffer]
        rows = np.concatenate([carry_rows] + [np.arange(s, min(s + block, count)) for s in group])
        labels_ = np.concatenate([carry_labels] + [labels[s:s + block] for s in group])
        order = rng.permutation(len(rows))
        rows, labels_ = rows[order], labels_[order]
        full = (len(rows) // batch_size) * batch_size
        batches = [(rows[start:start + batch_size], labels_[start:start + batch_size])
                   for start in range(0, full, batch_size)]
        if batches:
            yield batches
        carry_rows, carry_labels = rows[full:], labels_[full:]
    if len(carry_rows):
        yield [(carry_rows, carry_labels)]


def shuffled_batches(path: str | Path, batch_size: int, buffer_rows: int, seed: int,
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every row once, in `shuffled_order`'s batches for `seed`, read through h5py (float32): the reference the
    training feed (`vggbn.storage.feed`) is checked against."""
    with open_features(path) as file:
        features = file["features"]
        chunk = features.chunks[0] if features.chunks else 1
        plans = shuffled_order(features.shape[0], chunk, batch_size, buffer_rows, np.random.default_rng(seed),
                               file["labels"])
        yield from ((x, y) for x, y, _ in planned_shares(path, features, plans, lambda count: slice(0, count)))


def planned_shares(path: str | Path, features: h5py.Dataset, plans, share: Callable[[int], slice]
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """The batches `plans` (`shuffled_order`) name, each only the rows `share(its row count)` of it: (features float32,
    labels, the batch's row count). A buffer's rows are read as whole chunks through h5py (a compressed chunk can
    only be read whole), then picked: memory stays at about a buffer."""
    chunk = features.chunks[0] if features.chunks else 1
    for plan in plans:
        parts = [(rows[share(len(rows))], labels[share(len(rows))], len(rows)) for rows, labels in plan]
        needed = np.unique(np.concatenate([rows for rows, _, _ in parts]) // chunk) * chunk
        block = np.concatenate([read_rows(path, features, start, start + chunk) for start in needed.tolist()]) \
            if len(needed) else np.empty((0, *features.shape[1:]), np.float32)
        for rows, labels, count in parts:  # only the file's last chunk is short, and it sorts last
            at = np.searchsorted(needed, rows // chunk * chunk) * chunk + rows % chunk
            yield block[at], labels, count


def row_count(path: str | Path) -> int:
    """How many rows a feature file holds."""
    with open_features(path) as file:
        return file["features"].shape[0]


def feature_cut(path: str | Path) -> str:
    """The layer a feature file's features were cut at: later stages split the classifier there too."""
    with open_features(path) as file:
        return str(file.attrs["cut"])
