"""Benchmark of the finetune stage: training VGG16's dense part with BN streamed from an HDF5 feature file against
the same arrays in memory, and its training GFLOP/s against a large matmul, all measured side by side in one run.

The model: `models.split(models.vgg16("none"))`'s dense part (25088 -> 4096 -> 4096 -> 1000, random weights)
with calibrated BN from `surgery.insert_bn` (synthetic statistics), compiled by `train.compile_for_training`
(Adam), trained under `train.seed_everything` as `train.finetune` does. Streamed: `features.shuffled_batches` over
a file written by `features.build_feature_file`, through `train._dataset` (the tf.data wrapper `train.finetune`
fits on: one generator running over all epochs, `steps_per_epoch` per epoch). In memory: `model.fit(x, y)` on
the same rows. Each configuration is compiled once and warmed up (tracing, Adam's slots), then the
configurations alternate for `--rounds` rounds of a 2-epoch fit each; only the second epoch of each fit is timed
(steady state).

Every measurement gives two rates. Wall: samples per wall-clock second, the best round counting (other processes on
a shared machine only ever slow an epoch down). CPU: samples per CPU-second of this process times the cores, what
the cores would deliver if this process had them to itself and kept them busy; it is far less sensitive to other
load (it reads up to ~15% high under contention, when waiting threads spin less) and blind to idle waits. `util` is
the share of the cores the process got in the best wall round: near 1, the wall figures need no CPU cross-check.
From the CPU figures, `stream_over_memory_bound` is the worst case on cores of our own: the stream's extra CPU work
(HDF5 reads, shuffling, tf.data) not overlapped at all, run on one core.

    python3 bench/finetune.py [--rows 2048] [--batch-size 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from itertools import count
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's vggbn, whatever is installed

CORES = len(os.sched_getaffinity(0))


def dense_bn_model():
    """VGG16's dense part with calibrated BN after fc1 and fc2 (synthetic statistics: no data needed)."""
    import numpy as np

    from vggbn import models, surgery

    _, dense = models.split(models.vgg16("none"))
    rng = np.random.default_rng(0)
    stats = {name: (rng.uniform(0, 2, 4096), rng.uniform(0.5, 4, 4096)) for name in surgery.hidden_dense_names(dense)}
    return surgery.insert_bn(dense, stats)


def matmul_params(model) -> int:
    """Weights that take part in a matmul: the kernels of the Dense layers (biases and BN are left out)."""
    import keras

    return sum(int(math.prod(layer.kernel.shape)) for layer in model.layers if isinstance(layer, keras.layers.Dense))


def write_features(path: Path, work: Path, rows: int, row_shape, seed: int = 0) -> None:
    """A feature file of `rows` random post-ReLU-like rows and labels, through `features.build_feature_file`."""
    import numpy as np

    from vggbn import features

    rng = np.random.default_rng(seed)

    def extract(indices):
        for start in range(0, len(indices), 256):
            size = len(indices[start:start + 256])
            yield np.maximum(rng.standard_normal((size, *row_shape), dtype=np.float32), 0)

    features.build_feature_file(path, paths=[f"img{i}" for i in range(rows)],
                                labels=rng.integers(0, 1000, rows).tolist(), md5s=["-"] * rows, extract=extract,
                                row_shape=row_shape, dtype="float32", work_dir=work, feature_recipe={"bench": 1})


def epoch_timer():
    """A Keras callback keeping the wall and CPU seconds (all of this process's threads) of every epoch."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.wall, self.cpu = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.wall.append(time.perf_counter() - self.start[0])
            self.cpu.append(time.process_time() - self.start[1])

    return EpochTimer()


def matmul_gflops(dtype, n: int, calls: int) -> tuple[float, float]:
    """(wall, CPU x cores) GFLOP/s (2 n^3 per call) of `calls` eager tf.linalg.matmul calls on n x n matrices."""
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal((n, n), seed=(1, 2)), dtype)
    b = tf.cast(tf.random.stateless_normal((n, n), seed=(3, 4)), dtype)
    tf.linalg.matmul(a, b).numpy()  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        tf.linalg.matmul(a, b)[0, 0].numpy()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gflop = calls * 2 * n ** 3 / 1e9
    return gflop / wall, gflop / cpu * CORES


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2048, help="cached feature rows (100 kB each)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shuffle-buffer", type=int, default=4096, help="finetune.shuffle_buffer (rows)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds")
    parser.add_argument("--matmul-n", type=int, default=4096)
    args = parser.parse_args()

    import warnings

    import h5py
    import tensorflow as tf

    from vggbn import features, models, train

    # Keras warns that fit's default shuffle=True does not apply to a dataset: train.finetune fits the same way.
    warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {CORES} cores (other processes slow the wall figures)")
    train.seed_everything(0)  # as train.finetune does: seeded RNGs and deterministic kernels, for both paths
    base = dense_bn_model()
    row_shape = tuple(base.input_shape[1:])
    params = matmul_params(base)
    flops_per_sample = 6 * params
    steps = math.ceil(args.rows / args.batch_size)
    units = [str(math.prod(row_shape))] + [str(layer.units) for layer in base.layers if hasattr(layer, "units")]
    print(f"dense part with BN ({', '.join(layer.name for layer in base.layers[1:])}): {' -> '.join(units)}; "
          f"{params / 1e6:.1f}M weights in matmuls (Dense kernels), training counted as 6 FLOP per such weight per "
          f"sample (2 forward, 2 input gradient, 2 weight gradient): {flops_per_sample / 1e9:.3f} GFLOP per sample")

    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        path = Path(tmp) / "train.h5"
        write_features(path, Path(tmp) / "work", args.rows, row_shape)
        with h5py.File(path, "r") as file:
            x, y = file["features"][:], file["labels"][:]
            chunks = file["features"].chunks
        print(f"{args.rows} rows of {row_shape} float32 ({x[0].nbytes / 1e3:.0f} kB each, HDF5 chunks {chunks}), "
              f"batch {args.batch_size}, {steps} steps per epoch, shuffle buffer {args.shuffle_buffer} rows")

        def streamed(seed):
            def batches():  # what train.finetune's train_batches does
                for epoch in count():
                    yield from features.shuffled_batches(path, args.batch_size, args.shuffle_buffer,
                                                         seed=seed * 100_003 + epoch)
            return train._dataset(batches, row_shape)

        configs = {}
        for compute in ("float32", "bfloat16"):
            for source in ("memory", "stream"):
                model = models.with_compute_dtype(models.copy_chain(base, name=base.name), compute)
                train.compile_for_training(model, 1e-4)
                configs[source, compute] = model
        seeds = count()

        def fit(source, compute, epochs, steps_per_epoch=steps):
            model, timer = configs[source, compute], epoch_timer()
            if source == "memory":
                n = steps_per_epoch * args.batch_size
                model.fit(x[:n], y[:n], batch_size=args.batch_size, epochs=epochs, shuffle=True, callbacks=[timer],
                          verbose=0)
            else:
                model.fit(streamed(next(seeds)), epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=[timer],
                          verbose=0)
            return timer

        print("warm-up: 2 steps of each configuration (traces the train step, creates Adam's slots)")
        for source, compute in configs:
            fit(source, compute, 1, steps_per_epoch=2)

        # The data path's own capacity: the streamed dataset iterated without a model, for 3 epochs.
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in streamed(next(seeds)).take(3 * steps):
            pass
        data_wall = 3 * args.rows / (time.perf_counter() - start)
        data_cpu = 3 * args.rows / (time.process_time() - cpu_start) * CORES
        print(f"the streamed dataset alone (features.shuffled_batches through train._dataset, no model): "
              f"{data_wall:.0f} samples/s wall, {data_cpu:.0f} cpu")

        wall, cpu, util = ({key: [] for key in [*configs, "matmul"]} for _ in range(3))
        for round_ in range(args.rounds):
            for key in configs:
                timer = fit(*key, epochs=2)
                wall[key].append(args.rows / timer.wall[1])
                cpu[key].append(args.rows / timer.cpu[1] * CORES)
                util[key].append(timer.cpu[1] / timer.wall[1] / CORES)
            gflops_wall, gflops_cpu = matmul_gflops(tf.float32, args.matmul_n, 3)
            wall["matmul"].append(gflops_wall)
            cpu["matmul"].append(gflops_cpu)
            util["matmul"].append(gflops_wall / gflops_cpu)
            print(f"round {round_ + 1} (samples/s; matmul GFLOP/s): " + ", ".join(
                f"{' '.join(key) if isinstance(key, tuple) else key} {wall[key][-1]:.1f} (cpu {cpu[key][-1]:.1f}, "
                f"util {util[key][-1]:.2f})" for key in wall), flush=True)

    figures = {}
    for kind, rates, suffix in (("wall", wall, ""), ("cpu", cpu, "_cpu")):
        best = {key: max(values) for key, values in rates.items()}
        train_gflops = best["stream", "float32"] * flops_per_sample / 1e9
        figures.update({
            f"stream_over_memory{suffix}": best["stream", "float32"] / best["memory", "float32"],
            f"train_gflops_over_matmul{suffix}": train_gflops / best["matmul"],
            f"train_gflops{suffix}": train_gflops,
            f"matmul_gflops{suffix}": best["matmul"],
            f"memory_train_gflops_over_matmul{suffix}": best["memory", "float32"] * flops_per_sample / 1e9
            / best["matmul"],
            f"bf16_stream_over_memory{suffix}": best["stream", "bfloat16"] / best["memory", "bfloat16"],
        })
    # Contention-proof lower bound for a machine of our own: the stream's extra CPU work run serially, on one core.
    figures["stream_over_memory_bound"] = 1 / (1 + CORES * (1 / figures["stream_over_memory_cpu"] - 1))
    for source in ("stream", "memory"):
        for compute, short in (("float32", "fp32"), ("bfloat16", "bf16")):
            figures[f"{source}_{short}_samples_s"] = max(wall[source, compute])
            figures[f"{source}_{short}_samples_s_cpu"] = max(cpu[source, compute])
    figures.update({"stream_data_only_samples_s": data_wall, "stream_data_only_samples_s_cpu": data_cpu})
    figures.update({"util_min": min(values[wall[key].index(max(wall[key]))] for key, values in util.items()),
                    "batch_size": args.batch_size, "rows": args.rows, "cores": CORES})
    print(f"stream_over_memory = samples/s streamed from HDF5 (features.shuffled_batches through train._dataset) / "
          f"samples/s of model.fit(x, y) on the same rows in memory, fp32, batch {args.batch_size}, steady-state "
          f"epoch, best of {args.rounds} alternating rounds each: wall {figures['stream_over_memory']:.3f}, "
          f"cpu {figures['stream_over_memory_cpu']:.3f}; bound {figures['stream_over_memory_bound']:.3f}: the worst "
          f"case on {CORES} cores of our own, if all the stream's extra CPU work (HDF5 reads, shuffling, tf.data) ran "
          f"serially on one core, 1 / (1 + {CORES} x (1 / cpu - 1)) (target >= 0.9)")
    print(f"train_gflops_over_matmul = 6 x {params / 1e6:.1f}M x streamed fp32 samples/s / GFLOP/s of a "
          f"{args.matmul_n}x{args.matmul_n} fp32 tf.linalg.matmul: wall {figures['train_gflops']:.1f} / "
          f"{figures['matmul_gflops']:.1f} = {figures['train_gflops_over_matmul']:.3f}, cpu "
          f"{figures['train_gflops_cpu']:.1f} / {figures['matmul_gflops_cpu']:.1f} = "
          f"{figures['train_gflops_over_matmul_cpu']:.3f} (target >= 0.7)")
    print(f"bf16 (models.with_compute_dtype(model, 'bfloat16') before compiling): streamed "
          f"{figures['stream_bf16_samples_s']:.1f} samples/s wall, {figures['stream_bf16_samples_s_cpu']:.1f} cpu")
    print(f"util_min = {figures['util_min']:.2f}: the smallest share of the {CORES} cores this process got in a best "
          "wall round (below ~0.9 other load distorted the wall figures; the cpu figures stand instead)")
    print(" ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                   for key, value in figures.items()))


if __name__ == "__main__":
    main()
