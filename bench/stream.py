"""Benchmark of the training feed alone: what `finetune` and `transfer` train from, from a feature file to tensors
ready for a step, no model, against the rate the same file's bytes are read raw, in the same run.

The file: VGG16's row size (7x7x512, block5_pool), float16 and float32, `--gb` GB of features each (4 by default:
far more than a shuffle buffer, so every row comes from the file), written as `features.build_feature_file` lays it
out (HDF5 chunks of about 1 MiB, `features.chunk_rows_for`; no filter unless `--compression`), then read once
(page cache warm: the figures are what the CPU and memory deliver, no disk).

- read: the file's feature bytes read raw, whole chunks in file order (`os.preadv` at each chunk's byte offset),
  one thread and one thread per core, into a preallocated, pre-touched buffer of `roofline.ARRAY_LLC_MULTIPLE` x the
  last-level cache (each thread its own part of it), chunk after chunk, from the part's start again when full: the
  bytes land in memory, as a feed's must (its batches are read ahead of the step that takes them: prefetched
  batches outgrow the cache, VGG16's at 256 rows are 13-26 MB each), with nothing else done: what a feed could at
  best deliver. `read_cached`: the same into a buffer of one chunk, which stays in the CPU's cache (faster: the
  bytes never reach memory), and `read_batch`: into a buffer of one batch's bytes a thread (partly cached), beside.
- feed: `storage.feed.Feed(path, batch, buffer, dtype=None, tensors=True)`, epoch after epoch: exactly what
  `feature_training.train_on_features` trains from (the shuffled order of `features.shuffled_batches`, rows read
  straight into each batch, a shuffle buffer read ahead, tensors as the file stores them, which the step casts to
  its compute dtype on its own device); one thread and one thread per core. `feed_float32` (float16 only): the
  same cast to float32 tensors on the CPU, before the step, as the feed did before, for comparison.
- h5py: the previous feed (`features.shuffled_batches`, h5py reads into a buffer, through tf.data's prefetch as
  `finetune` used it), for comparison.
`feed_over_read_<dtype>` = the median over rounds of (the raw read's wall time / the feed's), each round's raw read
and feed run one right after the other, each the better of one thread and one per core (target >= 0.8). Paired so:
this VM's memory bandwidth moves by up to 2x from one minute to the next (a raw read of the same file measured 13
and 20 GB/s in one run), and the best raw read of one window over the best feed of another says more about the
windows than about the feed; `feed_over_best_read_<dtype>` (the best of each) is printed beside it. Rows/s and GB/s
(the file's bytes a second, each path's best round) for one and for all cores; `feed_over_read_batch_<dtype>` and
`feed_over_read_cached_<dtype>` against `read_batch` and `read_cached`.

Minimum work (the bound): the file's feature bytes N x 25088 x itemsize, read once: the raw read's rate is the least
time. The best feed faster than the best raw read (`feed_over_best_read` > 1) means the bound is wrong: the
benchmark fails. `--smoke`: 2 MB files of 7x7x16 rows (seconds); no ratio is held to <= 1 there (at that size a
pass is microseconds, dominated by Python and thread start-up, and no rate means anything).

    python3 bench/stream.py [--gb 4] [--dtypes float16 float32] [--rounds 8] [--compression none] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import CORES, print_figures, print_load

import roofline
from roofline import ARRAY_LLC_MULTIPLE, llc_bytes

ROW_SHAPE = (7, 7, 512)
SMOKE_ROW_SHAPE = (7, 7, 16)
READ_BYTES = 16 << 20  # the raw read's largest call: the feed reads a block of its order (~12-24 MB) a call


def write_file(path: Path, rows: int, row_shape, dtype: str, compression: str | None, seed: int = 0) -> None:
    """A feature file of `rows` post-ReLU-like rows (half zeros) and labels below 1000, laid out as
    `features.build_feature_file` lays it out (chunks of about 1 MiB), written a block of chunks at a time."""
    import h5py
    import numpy as np

    from vggbn.storage import features

    rng = np.random.default_rng(seed)
    chunk = features.chunk_rows_for(row_shape, dtype)
    block = chunk * max(1, 64 // chunk * 4)
    pattern = np.maximum(rng.standard_normal((block, *row_shape), dtype=np.float32), 0).astype(dtype)
    with h5py.File(path, "w") as file:
        data = file.create_dataset("features", (rows, *row_shape), dtype=dtype, chunks=(min(chunk, rows), *row_shape),
                                   compression=compression)
        for start in range(0, rows, block):
            stop = min(start + block, rows)
            data[start:stop] = np.roll(pattern, start // block, axis=0)[:stop - start]
        file.create_dataset("labels", data=rng.integers(0, 1000, rows).astype(np.int32))


def chunk_extents(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of every chunk of `features`, in file order."""
    import h5py

    with h5py.File(path, "r") as file:
        extents = []
        file["features"].id.chunk_iter(lambda info: extents.append((info.byte_offset, info.size)))
    return sorted(extents)


def raw_read_s(path: Path, extents, threads: int, buffer_bytes: int) -> tuple[float, float]:
    """(wall, CPU) seconds to read every chunk whole, in file order, `threads` threads on contiguous ranges of
    chunks, each into its own preallocated, pre-touched buffer of `buffer_bytes` / `threads` (at least a chunk),
    from its start again when full: with several times the last-level cache, the bytes land in memory as a feed's
    must; with one chunk's, in the cache. Chunks stored back to back are read by one call, up to `READ_BYTES` (and
    the buffer): as few calls as the feed's own reads, so no call overhead the feed would not pay either."""
    import numpy as np

    largest = max(size for _, size in extents)
    buffers = [np.zeros(max(buffer_bytes // threads, largest), np.uint8) for _ in range(threads)]  # touched
    fd = os.open(path, os.O_RDONLY)
    bounds = [len(extents) * t // threads for t in range(threads + 1)]

    def reads(t, room):
        """(offset, size) of each call: back-to-back chunks merged up to `room` bytes."""
        merged = []
        for offset, size in extents[bounds[t]:bounds[t + 1]]:
            if merged and merged[-1][0] + merged[-1][1] == offset and merged[-1][1] + size <= room:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((offset, size))
        return merged

    def read(t, calls):
        view, place = memoryview(buffers[t]), 0
        for offset, size in calls:
            place = 0 if place + size > len(view) else place
            if os.preadv(fd, [view[place:place + size]], offset) != size:
                raise OSError(f"{path}: short read at {offset}")
            place += size

    calls = [reads(t, min(len(buffers[t]), READ_BYTES)) for t in range(threads)]
    try:
        with ThreadPoolExecutor(threads) as pool:
            return timed(lambda: list(pool.map(read, range(threads), calls)))
    finally:
        os.close(fd)


def timed(work) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads, kernel time included) of `work()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def feed_s(stream, seed: int) -> tuple[float, float]:
    """(wall, CPU) seconds for one epoch of a `feed.Feed` (its buffers kept from epoch to epoch, as in training)."""
    return timed(lambda: [None for _ in stream.epoch(seed)])


def h5py_feed_s(path: Path, batch_size: int, buffer_rows: int, seed: int) -> tuple[float, float]:
    """(wall, CPU) seconds for one epoch of the previous feed: `features.shuffled_batches` through tf.data's
    prefetch."""
    from vggbn.numerics import feature_training as finetune
    from vggbn.storage import features

    return timed(lambda: [None for _ in finetune._prefetched(features.shuffled_batches(path, batch_size, buffer_rows,
                                                                                       seed))])


# the order a round runs the paths in: each raw read right before the feed it is paired with
ORDER = ("read", "feed", "read_1", "feed_1", "read_batch", "read_cached", "feed_float32", "h5py")


def measure(path: Path, rows: int, args, tag: str, figures: dict) -> None:
    """Every path over the file at `path`, `args.rounds` alternating rounds, best counting; figures keyed by tag."""
    import numpy as np

    from vggbn.storage import feed

    extents = chunk_extents(path) if args.compression == "none" else None
    file_bytes = sum(size for _, size in extents) if extents else Path(path).stat().st_size
    # as feature_training reads it: tensors as the file stores them, ready for a step (which casts them)
    feeds = {threads: feed.Feed(path, args.batch_size, args.shuffle_buffer, reading=feed.Reading(threads), dtype=None,
                                tensors=True) for threads in (1, CORES)}
    paths = {"feed_1": lambda seed: feed_s(feeds[1], seed), "feed": lambda seed: feed_s(feeds[CORES], seed)}
    if tag == "fp16":  # the previous way: float32 tensors, cast on the CPU before the step
        as_float32 = feed.Feed(path, args.batch_size, args.shuffle_buffer, dtype="float32", tensors=True)
        paths["feed_float32"] = lambda seed: feed_s(as_float32, seed)
    if extents:
        memory = args.read_buffer or ARRAY_LLC_MULTIPLE * llc_bytes()
        batch_bytes = file_bytes * args.batch_size // max(rows, 1)
        paths["read"] = lambda seed: raw_read_s(path, extents, CORES, memory)
        paths["read_1"] = lambda seed: raw_read_s(path, extents, 1, memory)
        paths["read_batch"] = lambda seed: raw_read_s(path, extents, CORES, batch_bytes * CORES)
        paths["read_cached"] = lambda seed: raw_read_s(path, extents, CORES, 0)
    if args.h5py:
        paths["h5py"] = lambda seed: h5py_feed_s(path, args.batch_size, args.shuffle_buffer, seed)
    paths = {name: paths[name] for name in ORDER if name in paths}
    best, best_cpu, paired = {}, {}, []
    for run in paths.values():
        run(0)  # warms the page cache, and each feed's buffers
    for round_ in range(args.rounds):
        walls = {}
        for name, run in paths.items():
            walls[name], cpu = run(round_ + 1)
            best[name] = min(best.get(name, walls[name]), walls[name])
            best_cpu[name] = min(best_cpu.get(name, cpu), cpu)
        if extents:  # this round's raw read and feed, run one right after the other
            paired.append(min(walls["read"], walls["read_1"]) / min(walls["feed"], walls["feed_1"]))
        print(f"{tag} round {round_ + 1} (best rows/s so far, wall): " + ", ".join(
            f"{k} {rows / v:.0f}" for k, v in best.items()), flush=True)
    for name, seconds in best.items():
        figures[f"{name}_rows_s_{tag}"] = rows / seconds
        figures[f"{name}_gb_s_{tag}"] = file_bytes / seconds / 1e9
    if extents:  # the bound: the raw read, on one core or all
        read, fed = min(best["read"], best["read_1"]), min(best["feed"], best["feed_1"])
        figures[f"feed_over_read_{tag}"] = float(np.median(paired))
        figures[f"feed_over_best_read_{tag}"] = read / fed
        figures[f"feed_over_read_cpu_{tag}"] = min(best_cpu["read"], best_cpu["read_1"]) / min(best_cpu["feed"],
                                                                                               best_cpu["feed_1"])
        figures[f"feed_over_read_cached_{tag}"] = best["read_cached"] / fed
        figures[f"feed_over_read_batch_{tag}"] = best["read_batch"] / fed
        if "feed_float32" in best:
            figures[f"feed_float32_over_read_{tag}"] = read / best["feed_float32"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=4.0, help="GB of features in each file")
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shuffle-buffer", type=int, default=4096, help="finetune.shuffle_buffer (rows)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--read-buffer", type=int, default=0,
                        help="bytes the raw read lands in (default: 4 x the last-level cache)")
    parser.add_argument("--compression", default="none", choices=("none", "lzf", "gzip"))
    parser.add_argument("--h5py", action="store_true", help="also the previous feed (h5py + tf.data)")
    parser.add_argument("--smoke", action="store_true", help="2 MB files (seconds); feed_over_read not checked")
    parser.add_argument("--dir", default=None, help="where to write the files (default: a temporary folder)")
    args = parser.parse_args()
    row_shape = SMOKE_ROW_SHAPE if args.smoke else ROW_SHAPE
    gb = 0.002 if args.smoke else args.gb
    if args.smoke:
        args.rounds, args.h5py, args.read_buffer = 1, True, 4 << 20
    print_load()
    figures, bounds, references = {}, {}, {}
    for dtype in args.dtypes:
        import numpy as np

        tag = {"float16": "fp16", "float32": "fp32"}[dtype]
        rows = int(gb * 1e9 // (np.prod(row_shape) * np.dtype(dtype).itemsize))
        work = Path(tempfile.mkdtemp(prefix="bench-stream-", dir=args.dir))
        try:
            path = work / f"features-{tag}.h5"
            start = time.perf_counter()
            write_file(path, rows, row_shape, dtype, None if args.compression == "none" else args.compression)
            print(f"{tag}: {rows} rows of {row_shape} {dtype} ({path.stat().st_size / 1e9:.2f} GB on disk, "
                  f"compression {args.compression}), written in {time.perf_counter() - start:.1f} s", flush=True)
            measure(path, rows, args, tag, figures)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if f"feed_over_read_{tag}" in figures:  # the best feed faster than the best raw read: a wrong bound
            bounds[f"read_over_feed_{tag}"] = (1 / figures[f"feed_over_best_read_{tag}"],
                                               f"the raw read of the file's chunks in file order, "
                                               f"{figures[f'read_gb_s_{tag}']:.1f} GB/s on {CORES} cores")
            references[f"feed_over_read_{tag}"] = (figures[f"feed_over_read_{tag}"],
                                                   "the raw read run right before it, the median over rounds")
            print(f"{tag}: feed {figures[f'feed_rows_s_{tag}']:.0f} rows/s ({figures[f'feed_gb_s_{tag}']:.2f} GB/s) "
                  f"on {CORES} cores, {figures[f'feed_1_rows_s_{tag}']:.0f} on one; raw read "
                  f"{figures[f'read_rows_s_{tag}']:.0f} rows/s ({figures[f'read_gb_s_{tag}']:.2f} GB/s), "
                  f"{figures[f'read_1_rows_s_{tag}']:.0f} on one: feed_over_read "
                  f"{figures[f'feed_over_read_{tag}']:.3f} (target >= 0.8)", flush=True)
    # smoke: microsecond passes, no rate means anything
    roofline.check(bounds=bounds, references=references, enforce=not args.smoke)
    figures["cores"] = CORES
    keys = [k for k in figures if k.startswith("feed_over_read")]
    print_figures({**{k: figures[k] for k in keys}, **{k: v for k, v in figures.items() if k not in keys}})


if __name__ == "__main__":
    main()
