"""Benchmark of memory: peak RSS of the conv_features and finetune paths on 4N inputs over N inputs.

Each run is its own subprocess (this script with `--child`), and its peak RSS is the `ru_maxrss` that
`os.wait4` reports for exactly that child. The conv_features run is `vggbn.numerics.extract.extract_split` over JPEG files
on disk (decode, resize, preprocess, the conv part, the chunked HDF5 file) with a demo-sized VGG
(`models.build_demo_classifier`, 64x64, cut at its last pool: 64 kB per feature row). The finetune run is
`vggbn.numerics.feature_training.train_on_features` (one epoch, streamed from HDF5 in shuffled batches, validated after the epoch)
of that model's dense part with calibrated BN (`surgery.insert_bn`, synthetic statistics). Streaming keeps memory
flat: a ratio near 1 passes; a path that held every image or feature row would add the MB printed as "if held".

The transfer run is `vggbn.numerics.transfer.compare_transfer` (train_mode dense, one epoch, batch 16) from VGG16's full-size
dense part (`models.vgg16('none')` split at block5_pool: 25088 -> 4096 -> 4096 -> 1000, 124M parameters, random
weights) on 64 synthetic train rows and 32 valid rows, over a 2 x 2 grid (learning rates x seeds) against a
1 x 1 grid: one training's model and optimizer at a time keeps the ratio near 1; TensorFlow keeping each
training (as it did before `vggbn.numerics.tfmemory`) would add about 1.4 GB per training.
The same grids again under `VGGBN_STRATEGY=mirrored` over two logical CPU devices (`transfer_rss_ratio_grid_mirrored`):
under several replicas every prediction goes through `distribute.split_run`, which must not keep a predictor's
model once the training that made it is done.

    python3 bench/memory.py [--n 1000] [--finetune-n 2000] [--skip-transfer]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_figures, write_features, write_jpegs

INPUT_SIZE, FILTERS = 64, (32, 64)  # block2_pool: 16 x 16 x 64 float32 = 64 kB per feature row
SHUFFLE_BUFFER = 512  # rows; below N, as finetune.shuffle_buffer (4096) is below any real train set


def demo_model():
    from vggbn.numerics import models

    return models.build_demo_classifier(input_size=INPUT_SIZE, num_classes=10, filters=FILTERS, dense_units=128)


def child_conv(root: Path, count: int, out: Path) -> None:
    from vggbn.numerics import extract, models
    from vggbn.storage import features
    from vggbn.numerics.images import ImageInput

    conv, _ = models.split(demo_model())
    paths = sorted(str(p.relative_to(root)) for p in (root / "train").glob("*/*.JPEG"))[:count]
    stats = extract.extract_split(conv, ImageInput(root=str(root), batch_size=64, resize="squash", preprocess="caffe"),
                                  features.FeatureRows.of(paths, [int(Path(p).parent.name[1:]) for p in paths],
                                                          ["-"] * count),
                                  extract.Extraction("bench"), out / "train.h5", out / "work")
    assert stats["computed"] == count, stats


def child_finetune(train_path: Path, valid_path: Path) -> None:
    import numpy as np

    from vggbn.numerics import feature_training as finetune, models, surgery

    _, dense = models.split(demo_model())
    rng = np.random.default_rng(0)
    stats = {name: (rng.uniform(0, 1, 128), rng.uniform(0.5, 2, 128)) for name in surgery.hidden_dense_names(dense)}
    finetune.train_on_features(surgery.insert_bn(dense, stats), finetune.TrainingPlan(epochs=1, batch_size=64, lr=1e-4,
                               dropout=0.5, seed=0, shuffle_buffer=SHUFFLE_BUFFER), train_path=train_path,
                               valid_path=valid_path)


def child_transfer(train_path: Path, valid_path: Path, lrs: int, seeds: int, logical_cpus: int = 1) -> None:
    import tensorflow as tf

    if logical_cpus > 1:  # before TensorFlow starts: MirroredStrategy then has that many replicas
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    from vggbn.numerics import models, transfer

    full = models.vgg16("none")
    _, dense = models.split(full, "block5_pool")
    del full  # the conv part's weights go with it: the dense part keeps only its own layers
    transfer.compare_transfer({"without_bn": dense},
                              transfer.TransferGrid("dense", [1e-4 * 10 ** i for i in range(lrs)], list(range(seeds)), 1, 16),
                              train_path=train_path, valid_path=valid_path, num_classes=3)


def peak_rss(args: list[str], env: dict | None = None) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of this script run as a child with `args` (and `env` added to the environment)."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.DEVNULL,
                               env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"child {args} failed with exit code {process.returncode}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start  # ru_maxrss is in KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images of the small conv_features run (4N: the big)")
    parser.add_argument("--finetune-n", type=int, default=2000, help="feature rows of the small finetune run")
    parser.add_argument("--skip-transfer", action="store_true",
                        help="leave out the transfer grid at VGG16 scale (about a minute and 3 GB)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="N = 16 images, 64 rows, no transfer grid: seconds")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.finetune_n, args.skip_transfer = 16, 64, True
    if args.child:
        import warnings

        # Keras: fit's default shuffle=True does not apply to a dataset, and a validation generator of unknown
        # length "ran out of data" when it ends: both expected with train_on_features's streamed datasets.
        warnings.filterwarnings("ignore", message="`shuffle=True` was passed|Your input ran out of data")
        kind, *rest = args.child
        if kind == "conv":
            child_conv(Path(rest[0]), int(rest[1]), Path(rest[2]))
        elif kind == "transfer":
            child_transfer(Path(rest[0]), Path(rest[1]), *map(int, rest[2:]))
        else:
            child_finetune(Path(rest[0]), Path(rest[1]))
        return

    row_shape = (INPUT_SIZE // 2 ** len(FILTERS), INPUT_SIZE // 2 ** len(FILTERS), FILTERS[-1])
    row_mb = 4 * row_shape[0] * row_shape[1] * row_shape[2] / 2 ** 20
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp = Path(tmp)
        n = args.n
        write_jpegs(tmp / "images", 4 * n, crop=(320, 240), size=(96, 72), classes=10, mirror=False)
        rss = {}
        for count in (n, 4 * n):
            rss[count], seconds = peak_rss(["conv", str(tmp / "images"), str(count), str(tmp / f"conv{count}")])
            print(f"conv_features (extract.extract_split, demo VGG {INPUT_SIZE}x{INPUT_SIZE}, feature rows "
                  f"{row_shape}): {count} images: peak RSS {rss[count]:.0f} MB, {seconds:.1f} s", flush=True)
        figures["rss_ratio_4n"] = rss[4 * n] / rss[n]
        figures["rss_n_mb"], figures["rss_4n_mb"] = rss[n], rss[4 * n]
        held = 3 * n * (row_mb + INPUT_SIZE * INPUT_SIZE * 3 * 4 / 2 ** 20)
        print(f"if held: the 3N more images' features and decoded inputs would add {held:.0f} MB "
              f"(ratio {(rss[n] + held) / rss[n]:.2f})")

        m = args.finetune_n
        valid = tmp / "valid.h5"
        write_features(valid, tmp / "work-valid", 256, row_shape, classes=10, seed=256, block=500)
        for count in (m, 4 * m):
            write_features(tmp / f"train{count}.h5", tmp / f"work{count}", count, row_shape, classes=10, seed=count,
                           block=500)
            rss[count], seconds = peak_rss(["finetune", str(tmp / f"train{count}.h5"), str(valid)])
            print(f"finetune (finetune.train_on_features, 1 epoch, batch 64, shuffle buffer {SHUFFLE_BUFFER} rows): "
                  f"{count} feature rows ({count * row_mb:.0f} MB file): peak RSS {rss[count]:.0f} MB, {seconds:.1f} s",
                  flush=True)
        figures["finetune_rss_ratio_4n"] = rss[4 * m] / rss[m]
        figures["finetune_rss_n_mb"], figures["finetune_rss_4n_mb"] = rss[m], rss[4 * m]
        held = 3 * m * row_mb
        print(f"if held: the 3N more feature rows would add {held:.0f} MB (ratio {(rss[m] + held) / rss[m]:.2f})")

        if not args.skip_transfer:
            vgg_rows = (7, 7, 512)  # VGG16 at block5_pool
            for split, rows in (("train", 64), ("valid", 32)):
                write_features(tmp / f"vgg_{split}.h5", tmp / f"work-vgg-{split}", rows, vgg_rows, classes=3,
                               seed=rows, block=64)
            grid = {}
            for lrs, seeds in ((1, 1), (2, 2)):
                grid[lrs * seeds], seconds = peak_rss(["transfer", str(tmp / "vgg_train.h5"),
                                                       str(tmp / "vgg_valid.h5"), str(lrs), str(seeds)])
                print(f"transfer (transfer.compare_transfer, VGG16's dense part, 124M parameters, dense mode, 1 epoch "
                      f"of 64 rows at batch 16): {lrs} x {seeds} grid: peak RSS {grid[lrs * seeds]:.0f} MB, "
                      f"{seconds:.1f} s", flush=True)
            figures["transfer_rss_ratio_grid"] = grid[4] / grid[1]
            figures["transfer_rss_1_mb"], figures["transfer_rss_4_mb"] = grid[1], grid[4]
            mirrored = {}
            for lrs, seeds in ((1, 1), (2, 2)):
                mirrored[lrs * seeds], seconds = peak_rss(
                    ["transfer", str(tmp / "vgg_train.h5"), str(tmp / "vgg_valid.h5"), str(lrs), str(seeds), "2"],
                    env={"VGGBN_STRATEGY": "mirrored"})
                print(f"the same under VGGBN_STRATEGY=mirrored (2 logical CPU devices): {lrs} x {seeds} grid: peak "
                      f"RSS {mirrored[lrs * seeds]:.0f} MB, {seconds:.1f} s", flush=True)
            figures["transfer_rss_ratio_grid_mirrored"] = mirrored[4] / mirrored[1]
            print("if held: each of the 3 more trainings' model, gradients and Adam slots would add about 1,400 MB "
                  f"(ratio {(grid[1] + 3 * 1400) / grid[1]:.2f})")
    figures.update({"n": n, "finetune_n": m})
    print("rss_ratio_4n = peak RSS (os.wait4's ru_maxrss of the child) on 4N images / on N images (target <= 1.15); "
          "finetune_rss_ratio_4n the same on 4N / N cached rows (target <= 1.15); transfer_rss_ratio_grid the same "
          "for a 2 x 2 transfer grid / a 1 x 1 grid (target <= 1.15), transfer_rss_ratio_grid_mirrored under "
          "VGGBN_STRATEGY=mirrored (target <= 1.15)")
    print_figures(figures)


if __name__ == "__main__":
    main()
