"""Benchmark of the checks on reused bytes: what verifying costs where features are reused, next to what
computing them costs.

VGG16-sized feature rows (block5_pool, 7x7x512 float32: 100 kB a row) in chunks of 10 rows (about 1 MiB, as
`features.chunk_rows_for` picks), from files in the page cache, so the figures are the CPU cost of the checks (a
disk-bound read hides them further):

- `checked_reuse_over_plain`: rows/s of reading the previous run's rows through `features._Previous` (each chunk
  read whole and checked against its digest, as `conv_features` reuses them) / rows/s of h5py reading the same
  chunks unchecked.
- `checked_resume_over_plain`: rows/s of loading resumable chunks with `features._load_chunk` (parsed, then their
  rows checked against the digest in the file's name) / rows/s of `np.load` on the same files.
- `checked_reuse_over_conv`: rows/s of the checked reuse / images/s of VGG16's conv part (random weights, fp32,
  batch 8 at 224x224) computing those rows: how much cheaper a reused row stays than a computed one.

Each path runs `--rounds` rounds, alternating, and keeps its best; every figure comes as wall-clock and as CPU
(`_cpu`) ratio, as in the other benchmarks (see bench/README.md on a shared machine). Targets: `checked_reuse_over_conv` >= 50 (the
point: reuse stays far cheaper than computing); `checked_reuse_over_plain` >= 0.3; `checked_resume_over_plain` >=
0.1 (hashing at a few hundred MB/s against `np.load` from the page cache at memory speed: what a resumed chunk
costs, once, after a kill).

    python3 bench/verify.py [--rows 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common  # first: quiets TensorFlow, puts this checkout's vggbn first

import h5py  # noqa: E402
import numpy as np  # noqa: E402

import roofline  # noqa: E402

from vggbn.storage import features  # noqa: E402
from vggbn.storage.dvccache import CachedOutput  # noqa: E402

ROW_SHAPE, RECIPE = (7, 7, 512), {"bench": 1}  # what common.write_features stamps
CHUNK_ROWS = features.chunk_rows_for(ROW_SHAPE, "float32")  # 10


def conv_rate(rounds: int) -> common.Rates:
    from vggbn.numerics import models

    conv, _ = models.split(models.vgg16("none"))
    batch = np.random.default_rng(0).uniform(-120, 120, (8, 224, 224, 3)).astype(np.float32)
    conv.predict_on_batch(batch)  # warm-up
    rates = common.Rates()
    for _ in range(rounds):
        rates.time(lambda: conv.predict_on_batch(batch), len(batch))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="40 rows, one round, the conv part at batch 1: seconds")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.rounds = 40, 1
    common.print_load()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = tmp / "features.h5"
        common.write_features(out, tmp / "build", args.rows, ROW_SHAPE, classes=10, seed=0, block=100)
        with h5py.File(out) as file:
            assert file["features"].chunks[0] == CHUNK_ROWS
            values = file["features"][:]
        work = tmp / "work"
        work.mkdir()
        chunk_files = [features._save_chunk(work, i, values[a:a + CHUNK_ROWS], 0)
                       for i, a in enumerate(range(0, args.rows, CHUNK_ROWS))]

        def reuse_checked():
            previous = features._Previous(CachedOutput("features.h5", out, "", None), RECIPE, ROW_SHAPE, "float32")
            for row in range(args.rows):
                assert previous.read(row) is not None
            previous.close()

        def reuse_plain():
            with h5py.File(out) as file:
                for a in range(0, args.rows, CHUNK_ROWS):
                    file["features"][a:a + CHUNK_ROWS]

        def resume_checked():
            for path in chunk_files:
                assert features._load_chunk(path, (CHUNK_ROWS, *ROW_SHAPE), "float32") is not None

        def resume_plain():
            for path in chunk_files:
                np.load(path, allow_pickle=False)

        paths = {"reuse_checked": reuse_checked, "reuse_plain": reuse_plain, "resume_checked": resume_checked,
                 "resume_plain": resume_plain}
        for work_fn in paths.values():  # warm-up: page cache
            work_fn()
        rates = {name: common.Rates() for name in paths}
        for _ in range(args.rounds):
            for name, work_fn in paths.items():
                rates[name].time(work_fn, args.rows)
    rates["conv"] = conv_rate(args.rounds)
    mb = np.prod(ROW_SHAPE) * 4 / 1e6
    for name, rate in rates.items():
        print(f"{name}: {rate.best():.1f} rows/s ({rate.best() * mb:.1f} MB/s), cpu {rate.best('cpu'):.1f}")
    best = common.best_rates(rates)
    util = common.util_min(rates)
    common.print_util_min(util)
    figures = {}
    for suffix, rate in best.items():
        figures[f"checked_reuse_over_plain{suffix}"] = rate["reuse_checked"] / rate["reuse_plain"]
        figures[f"checked_resume_over_plain{suffix}"] = rate["resume_checked"] / rate["resume_plain"]
        figures[f"checked_reuse_over_conv{suffix}"] = rate["reuse_checked"] / rate["conv"]
    figures["util_min"] = util
    roofline.check(references={  # no bound: each against another path's measured rate
        "checked_reuse_over_plain": (figures["checked_reuse_over_plain"], "h5py reading the chunks unchecked"),
        "checked_resume_over_plain": (figures["checked_resume_over_plain"], "np.load on the same files"),
        "checked_reuse_over_conv": (figures["checked_reuse_over_conv"], "the conv part computing the rows")})
    common.print_figures(figures)


if __name__ == "__main__":
    main()
