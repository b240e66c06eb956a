"""The training feed: every row of a feature file once an epoch, in shuffled batches, read straight from the file
into the batches' own arrays by parallel threads, the next shuffle buffer read while this one's batches train.

The order is `features.shuffled_order`, the one shuffled order (same seed, same batches, same rows in each): blocks of
whole HDF5 chunks in a seeded random order, gathered a buffer of about `buffer_rows` rows at a time, each buffer
shuffled row by row; what does not fill a last batch is carried into the next buffer. The order is computed first
(row numbers and labels: a few bytes a row); then the rows are never gathered and copied again: each run of rows
stored back to back in the file is read by one `preadv` whose pieces are the rows' places in their batches, so the
kernel copies each row once, from the page cache to where the step reads it. The places are an array of C `iovec`s
that numpy computes, passed to the C library's `preadv` through ctypes, which releases the GIL: no Python object a
row, so the threads that read (a buffer's runs split between them) spend their time in the kernel's copy. With
`tensors`, each batch becomes a `tf.Tensor` sharing that memory (DLPack): no copy either. Memory: the batches of
about two shuffle buffers, as `features.shuffled_batches` held. Where the C library has no `preadv` (or ctypes
cannot open it), `os.preadv` reads into the same places, and without that `os.pread` (every Unix) reads each run
whole and copies its rows to their places (`choose_preadv`, by what the system has).

This direct path needs what `features.build_feature_file` writes: `features` stored unfiltered (no compression)
in native byte order. A file with filters (compressed chunks must be read and decompressed whole) is read through
h5py with the buffer in memory, in the same order.

A worker of a multi-worker strategy reads only its rows of each global batch (`worker_index`, `num_workers`): its
part by `distribute.split`, the one rule `training.Trainer` splits a batch by too, so the workers together read each
row once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple

import h5py
import numpy as np

from vggbn.cluster.distribute import split
from vggbn.cluster.environment import usable_cores
from vggbn.storage import features

PREFETCH = 2  # batches read ahead of the one being trained on
IOV_MAX = 1024  # buffers one preadv may scatter into (Linux)
ALIGN = 64  # bytes: what TensorFlow's CPU kernels require of a tensor's buffer (Eigen's EIGEN_MAX_ALIGN_BYTES)
SWITCH_INTERVAL = 2e-4  # s: how long a thread may hold the GIL while another waits for it, during an epoch
IOVEC = np.dtype([("base", np.uintp), ("len", np.uintp)])  # C's struct iovec: a place to read into and its size


def _libc_preadv(libc):
    """The C library's `preadv(fd, iov, iovcnt, offset)`, called through ctypes, which releases the GIL during the
    call: the places come as an array of `IOVEC` that numpy fills, no Python object a row (`os.preadv` takes one
    buffer object a place). None where the C library has none."""
    function = getattr(libc, "preadv", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64]
    function.restype = ctypes.c_ssize_t
    return function


def _places(address: int, count: int) -> list[memoryview]:
    """The `count` places an `IOVEC` array at `address` names, as writable memoryviews."""
    iovecs = np.frombuffer((ctypes.c_char * (count * IOVEC.itemsize)).from_address(address), IOVEC)
    return [memoryview((ctypes.c_char * int(size)).from_address(int(base))).cast("B")
            for base, size in iovecs.tolist()]


def _failed(error: OSError) -> int:
    ctypes.set_errno(error.errno or 0)  # what the caller reads, as after the C call
    return -1


def _os_preadv(fd: int, address: int, count: int, offset: int) -> int:
    """`_preadv` through Python's `os.preadv` (one memoryview a place; the GIL is released while it reads)."""
    try:
        return os.preadv(fd, _places(address, count), offset)
    except OSError as error:
        return _failed(error)


def _os_pread(fd: int, address: int, count: int, offset: int) -> int:
    """`_preadv` through `os.pread`, there on every Unix: the run's bytes at once, then each row to its place."""
    places = _places(address, count)
    try:
        data = os.pread(fd, sum(len(place) for place in places), offset)
    except OSError as error:
        return _failed(error)
    start = 0
    for place in places:
        piece = data[start:start + len(place)]
        place[:len(piece)] = piece
        start += len(piece)
    return len(data)


def choose_preadv(libc, os_module=os):
    """(name, function(fd, iovecs address, count, offset) -> bytes read or -1 with ctypes' errno set): the first
    this system has of the C library's `preadv`, Python's `os.preadv`, `os.pread`. By capability, not platform name:
    the tests pass a C library and an os without the call to force each fallback."""
    function = _libc_preadv(libc)
    if function is not None:
        return "libc.preadv", function
    if hasattr(os_module, "preadv"):
        return "os.preadv", _os_preadv
    return "os.pread", _os_pread


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # no C library to open by ctypes: the os module's calls
        return None


PREADV_NAME, _preadv = choose_preadv(_libc())


class _RowReader:
    """Reads rows of an unfiltered, native-order `features` dataset by their byte offsets (`preadv`)."""

    def __init__(self, path, dataset: h5py.Dataset):
        self.path, self.count = path, dataset.shape[0]
        self.row_shape, self.stored = dataset.shape[1:], dataset.dtype
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * dataset.dtype.itemsize
        self.chunk = dataset.chunks[0] if dataset.chunks else 1  # what the order is planned by
        self._stored_chunk = dataset.chunks[0] if dataset.chunks else max(self.count, 1)  # contiguous: one chunk
        self._offsets = self._chunk_offsets(dataset)
        self.fd = os.open(path, os.O_RDONLY)

    @staticmethod
    def usable(dataset: h5py.Dataset) -> bool:
        """Stored as plain bytes: no filter, native byte order, a numeric type."""
        plist = dataset.id.get_create_plist()
        return plist.get_nfilters() == 0 and dataset.dtype.isnative and dataset.dtype.kind == "f"

    def _chunk_offsets(self, dataset: h5py.Dataset) -> np.ndarray:
        """Byte offset of each chunk (-1: never written, reads as an error)."""
        if not dataset.chunks:
            offset = dataset.id.get_offset()
            return np.array([-1 if offset is None else offset], dtype=np.int64)
        offsets = np.full(-(-self.count // self._stored_chunk), -1, dtype=np.int64)
        zeros = (0,) * (len(dataset.shape) - 1)

        def record(info):
            offsets[info.chunk_offset[0] // self._stored_chunk] = info.byte_offset
        try:
            dataset.id.chunk_iter(record)
        except AttributeError:  # HDF5 before 1.12.3: one call a chunk
            for index in range(len(offsets)):
                info = dataset.id.get_chunk_info_by_coord((index * self._stored_chunk, *zeros))
                offsets[index] = -1 if info.byte_offset is None else info.byte_offset
        return offsets

    def runs(self, rows: np.ndarray, places: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        """The reads that put each of `rows` at its place (row i at address `places[i]`, a row's bytes): (the
        places as `IOVEC`s in file order, and for each run of rows stored back to back in the file: its byte
        offset, its first `IOVEC`, their count and its first row's number). One `preadv` a run, the kernel
        scattering its rows to their places. A run goes on from one chunk into the next where the file holds them
        one after the other (as `features.build_feature_file` writes them): a block of the order is one call."""
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        chunks = rows // self._stored_chunk
        starts = self._offsets[chunks]
        offsets = np.where(starts >= 0, starts + (rows - chunks * self._stored_chunk) * self.row_bytes, -1)
        iovecs = np.empty(len(rows), IOVEC)
        iovecs["base"], iovecs["len"] = places[order], self.row_bytes
        breaks = np.flatnonzero((np.diff(offsets) != self.row_bytes) | (offsets[1:] < 0) | (offsets[:-1] < 0)) + 1
        runs = []
        for first, stop in zip([0, *breaks.tolist()], [*breaks.tolist(), len(rows)]):
            for part in range(first, stop, IOV_MAX):
                runs.append((int(offsets[part]), part, min(part + IOV_MAX, stop) - part, int(rows[part])))
        return iovecs, runs

    def read_runs(self, iovecs: np.ndarray, runs) -> None:
        """Reads each of `runs` (as `runs()` gives them, with its `iovecs`) into its places; the GIL is released
        while the kernel copies."""
        address = iovecs.ctypes.data
        for offset, first, count, row in runs:
            read = _preadv(self.fd, address + first * IOVEC.itemsize, count, offset) if offset >= 0 else -2
            if read != count * self.row_bytes:
                why = ("not written" if read == -2 else os.strerror(ctypes.get_errno()) if read < 0
                       else "the file ends early")
                raise features.FeatureFileError(
                    f"{self.path}: rows {row}-{row + count - 1} cannot be read ({why}): the file is damaged; `dvc "
                    f"checkout {self.path}` restores it from DVC's cache, or rerun the stage that wrote it with "
                    "`dvc repro -f`")

    def close(self) -> None:
        os.close(self.fd)


class Reading(NamedTuple):
    """How a feed reads: `threads` reading rows (None: one per core), and `prefetch` > 0: the next shuffle buffer
    read while this one's batches are yielded."""
    threads: int | None = None
    prefetch: int = PREFETCH


class Feed:
    """The shuffled batches of one feature file, epoch after epoch (`epoch(seed)`), for `worker` (its index, the
    workers: `distribute.worker()`), with its batch buffers kept from one epoch to the next (allocated and their
    pages touched once, not every epoch).

    Features come as `dtype` (None: as the file stores them, float16 stays float16: half the bytes to move, and a
    step casts them exactly), labels as int32. `tensors` True: both as `tf.Tensor`s ready for a step, the features'
    tensor sharing the buffer its rows were read into (DLPack: no copy); a buffer is reused once nothing refers to
    its tensor any more. Else numpy arrays, each the batch's own. `reading`: how many threads read the rows, and
    whether the next shuffle buffer's rows are read while this one's batches are yielded.
    """

    def __init__(self, path, batch_size: int, buffer_rows: int, *, worker: tuple[int, int] = (0, 1),
                 reading: Reading = Reading(), dtype=np.float32, tensors: bool = False):
        worker_index, num_workers = worker
        if not 0 <= worker_index < num_workers:
            raise ValueError(f"Expected 0 <= worker_index < num_workers. Received: worker_index={worker_index}, "
                             f"num_workers={num_workers}")
        if batch_size < 1 or buffer_rows < 1:
            raise ValueError(f"Expected batch_size and buffer_rows >= 1. Received: {batch_size}, {buffer_rows}")
        self.path, self.batch_size, self.buffer_rows = path, batch_size, buffer_rows
        self.worker_index, self.num_workers = worker_index, num_workers
        self.threads, self.prefetch = reading.threads or len(usable_cores()), reading.prefetch
        self.dtype, self.tensors = dtype, tensors
        self._buffers = _Buffers() if tensors else None

    def _share(self, count: int) -> slice:
        """This worker's rows of a global batch of `count` (`distribute.split`, the one rule)."""
        return split(count, self.num_workers)[self.worker_index]

    def epoch(self, seed: int) -> Iterator[tuple]:
        """(features, labels) of every row once, in `features.shuffled_batches`' order for `seed`; with
        `num_workers` > 1, only this worker's slice of each global batch (`distribute.split`). Every global batch has
        `batch_size` rows but the last (the rest)."""
        return ((x, y) for x, y, _ in self.shares(seed))

    def shares(self, seed: int) -> Iterator[tuple]:
        """`epoch(seed)`'s batches, each with the row count of the global batch it is this worker's slice of:
        (features, labels, count), what `training.Trainer.train_batch` takes."""
        rng = np.random.default_rng(seed)
        with features.open_features(self.path) as file:
            dataset, labels = file["features"], file["labels"]
            dtype = np.dtype(self.dtype or dataset.dtype)
            if not _RowReader.usable(dataset):
                batches = _buffered(self.path, self.batch_size, self.buffer_rows, rng, self._share, dtype)
                yield from ((*_as_tensors(x, y), n) for x, y, n in batches) if self.tensors else batches
                return
            reader = _RowReader(self.path, dataset)
            # every label at once (4 bytes a row): one read an epoch, not one per block of the order
            plans = features.shuffled_order(dataset.shape[0], reader.chunk, self.batch_size, self.buffer_rows, rng, labels[:])
            try:
                with _prompt_gil_handoff():
                    yield from _read_ahead(reader, plans, self._share, self.threads, self.prefetch, dtype,
                                           self._buffers)
            finally:
                reader.close()


_handoffs = {"open": 0, "previous": None}
_handoffs_lock = threading.Lock()


@contextlib.contextmanager
def _prompt_gil_handoff():
    """Python's switch interval at most `SWITCH_INTERVAL` while a feed runs (the first feed in sets it, the last out
    restores it). A reader back from a `preadv` needs the GIL for a moment before its next one; by default a thread
    that holds it (the one planning the next buffer, or the training loop) keeps it up to 5 ms, while the kernel's
    copy that the reader would start takes about 1 (measured at 0.2 ms: the process busy 1.9 of 2 cores instead of
    1.8, the float16 feed about 5% faster)."""
    with _handoffs_lock:
        if _handoffs["open"] == 0:
            _handoffs["previous"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_handoffs["previous"], SWITCH_INTERVAL))
        _handoffs["open"] += 1
    try:
        yield
    finally:
        with _handoffs_lock:
            _handoffs["open"] -= 1
            if _handoffs["open"] == 0:
                sys.setswitchinterval(_handoffs["previous"])


def shuffled_batches(path, batch_size: int, buffer_rows: int, seed: int, **options) -> Iterator[tuple]:
    """One epoch of a `Feed(path, batch_size, buffer_rows, ...)` for `seed` (what the tests read): `options` are the
    Feed's `dtype` and `tensors`, and its worker and reading spelled out (`worker_index`, `num_workers`,
    `threads`, `prefetch`)."""
    worker = (options.pop("worker_index", 0), options.pop("num_workers", 1))
    reading = Reading(options.pop("threads", None), options.pop("prefetch", PREFETCH))
    return Feed(path, batch_size, buffer_rows, worker=worker, reading=reading, **options).epoch(seed)


def _as_tensors(x: np.ndarray, y: np.ndarray):
    import tensorflow as tf

    return tf.convert_to_tensor(x), tf.convert_to_tensor(y, tf.int32)


class _Buffers:
    """Batch arrays aligned for TensorFlow, each handed out as a fresh view of a buffer that is reused once that
    view is gone (the tensor made from it holds it through DLPack until TensorFlow frees the tensor). Pages are
    written once, when a buffer is made: no page faults batch after batch."""

    def __init__(self):
        self._free: list[np.ndarray] = []
        self._lent: list[tuple[np.ndarray, weakref.ref]] = []

    def take(self, shape, dtype) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        lent = []
        for base, view in self._lent:
            (lent.append((base, view)) if view() is not None else self._free.append(base))
        self._lent = lent
        fits = [i for i, base in enumerate(self._free) if len(base) >= nbytes + ALIGN]
        if fits:
            base = self._free.pop(fits[0])  # by position: `list.remove` would compare arrays elementwise
        else:
            base = np.empty(nbytes + ALIGN, np.uint8)
            base.fill(0)  # its pages made now, not one fault at a time while the kernel copies rows in
        start = (-base.ctypes.data) % ALIGN
        view = base[start:start + nbytes].view(dtype).reshape(shape)
        self._lent.append((base, weakref.ref(view)))
        return view


def _read_ahead(reader: _RowReader, plans, share, threads, prefetch, dtype, buffers):
    """The planned batches, a shuffle buffer's batches at a time: every run of rows read by one `preadv` straight
    into its rows' places in their batches, the runs split between `threads` threads; the next buffer read while
    this one's batches are yielded (`prefetch` 0: not). As tensors sharing `buffers`' arrays, or (no `buffers`) as
    numpy arrays of their own, converted to `dtype` where the file stores another; each (x, y, the row count of the
    global batch they are this worker's slice of)."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix="feed")
    stored = reader.stored

    def start(plan):
        batches, rows, places = [], [], []
        for batch_rows, labels in plan:
            count = len(batch_rows)
            part = share(count)
            batch_rows, labels = batch_rows[part], labels[part].astype(np.int32)
            shape = (len(batch_rows), *reader.row_shape)
            out = buffers.take(shape, stored) if buffers is not None else np.empty(shape, stored)
            places.append(out.ctypes.data + np.arange(len(batch_rows), dtype=np.uintp) * reader.row_bytes)
            rows.append(batch_rows)
            batches.append((out, labels, count))  # holds each batch's memory until its reads are done
        iovecs, runs = reader.runs(np.concatenate(rows), np.concatenate(places))
        done = np.cumsum([count for _, _, count, _ in runs])
        cuts = np.searchsorted(done, [done[-1] * t / threads for t in range(1, threads)]).tolist() if runs else []
        jobs = [pool.submit(reader.read_runs, iovecs, runs[a:b]) for a, b in zip([0, *cuts], [*cuts, len(runs)])
                if b > a]
        return batches, jobs

    def finished(entry):
        batches, jobs = entry
        for job in jobs:
            job.result()  # raises a reader's error here
        for out, labels, count in batches:
            if buffers is None:
                yield (out if out.dtype == dtype else out.astype(dtype)), labels, count
            else:
                import tensorflow as tf

                x = tf.experimental.dlpack.from_dlpack(out.__dlpack__())
                yield (x if x.dtype.as_numpy_dtype == dtype else tf.cast(x, dtype)), tf.convert_to_tensor(labels), count
        batches.clear()  # the views go with the tensors: their buffers are reused once those are dropped

    try:
        ahead = []
        for plan in plans:
            ahead.append(start(plan))
            if len(ahead) > min(prefetch, 1):
                yield from finished(ahead.pop(0))
        while ahead:
            yield from finished(ahead.pop(0))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _buffered(path, batch_size, buffer_rows, rng, share, dtype):
    """The same order for a file `_RowReader` cannot read directly: each buffer's chunks read through h5py
    (decompressed), by every worker that needs one of their rows (`features.planned_shares`)."""
    with features.open_features(path) as file:
        dataset = file["features"]
        chunk = dataset.chunks[0] if dataset.chunks else 1
        plans = features.shuffled_order(dataset.shape[0], chunk, batch_size, buffer_rows, rng, file["labels"])
        for x, y, count in features.planned_shares(path, dataset, plans, share):
            yield x.astype(dtype, copy=False), y, count
