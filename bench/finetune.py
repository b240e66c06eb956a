"""Benchmark of the finetune stage: training VGG16's dense part with BN streamed from an HDF5 feature file against
the same arrays in memory, and its training GFLOP/s against a large matmul, all measured side by side in one run.

The model: `models.split(models.vgg16("none"))`'s dense part (25088 -> 4096 -> 4096 -> 1000, random weights)
with calibrated BN from `surgery.insert_bn` (synthetic statistics), compiled by `training.compile_for_training`
(Adam), trained under `training.seed_everything` as `finetune.train_on_features` does. Streamed:
`features.shuffled_batches` over a file written by `features.build_feature_file`, through `finetune._dataset` (the
tf.data wrapper `finetune.train_on_features` fits on: one generator running over all epochs, `steps_per_epoch` per
epoch). In memory: `model.fit(x, y)` on
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
import tempfile
from itertools import count
from pathlib import Path

from common import (CORES, Rates, best_rates, matmul_gflops, print_figures, print_load, print_util_min, serial_bound,
                    util_min, write_features)


def dense_bn_model():
    """VGG16's dense part with calibrated BN after fc1 and fc2 (synthetic statistics: no data needed)."""
    import numpy as np

    from vggbn.numerics import models, surgery

    _, dense = models.split(models.vgg16("none"))
    rng = np.random.default_rng(0)
    stats = {name: (rng.uniform(0, 2, 4096), rng.uniform(0.5, 4, 4096)) for name in surgery.hidden_dense_names(dense)}
    return surgery.insert_bn(dense, stats)


def matmul_params(model) -> int:
    """Weights that take part in a matmul: the kernels of the Dense layers (biases and BN are left out)."""
    import keras

    return sum(int(math.prod(layer.kernel.shape)) for layer in model.layers if isinstance(layer, keras.layers.Dense))


def epoch_timer(rates: Rates, amount: float, epoch: int):
    """A Keras callback recording `amount` over the wall and CPU seconds (all of this process's threads) of epoch
    `epoch` (0-based) of a fit into `rates`."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, index, logs=None):
            if index == epoch:
                rates.start()

        def on_epoch_end(self, index, logs=None):
            if index == epoch:
                rates.stop(amount)

    return EpochTimer()


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

    from vggbn.storage import features
    from vggbn.numerics import feature_training as finetune, models, training

    # Keras warns that fit's default shuffle=True does not apply to a dataset: train_on_features fits the same way.
    warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
    print_load()
    training.seed_everything(0)  # as train_on_features does: seeded RNGs and deterministic kernels, for both paths
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
        write_features(path, Path(tmp) / "work", args.rows, row_shape, classes=1000, seed=0, block=256)
        with h5py.File(path, "r") as file:
            x, y = file["features"][:], file["labels"][:]
            chunks = file["features"].chunks
        print(f"{args.rows} rows of {row_shape} float32 ({x[0].nbytes / 1e3:.0f} kB each, HDF5 chunks {chunks}), "
              f"batch {args.batch_size}, {steps} steps per epoch, shuffle buffer {args.shuffle_buffer} rows")

        def streamed(seed):
            def batches():  # what train_on_features's train_batches does
                for epoch in count():
                    yield from features.shuffled_batches(path, args.batch_size, args.shuffle_buffer,
                                                         seed=seed * 100_003 + epoch)
            return finetune._dataset(batches, row_shape)

        configs = {}
        for compute in ("float32", "bfloat16"):
            for source in ("memory", "stream"):
                model = models.with_compute_dtype(models.copy_chain(base, name=base.name), compute)
                training.compile_for_training(model, 1e-4)
                configs[source, compute] = model
        seeds = count()

        def fit(source, compute, epochs, steps_per_epoch=steps, callbacks=()):
            model, callbacks = configs[source, compute], list(callbacks)
            if source == "memory":
                n = steps_per_epoch * args.batch_size
                model.fit(x[:n], y[:n], batch_size=args.batch_size, epochs=epochs, shuffle=True, callbacks=callbacks,
                          verbose=0)
            else:
                model.fit(streamed(next(seeds)), epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                          verbose=0)

        print("warm-up: 2 steps of each configuration (traces the train step, creates Adam's slots)")
        for source, compute in configs:
            fit(source, compute, 1, steps_per_epoch=2)

        # The data path's own capacity: the streamed dataset iterated without a model, for 3 epochs.
        data = Rates()
        data.time(lambda: [None for _ in streamed(next(seeds)).take(3 * steps)], 3 * args.rows)
        print(f"the streamed dataset alone (features.shuffled_batches through finetune._dataset, no model): "
              f"{data.best():.0f} samples/s wall, {data.best('cpu'):.0f} cpu")

        rates = {key: Rates() for key in [*configs, "matmul"]}
        for round_ in range(args.rounds):
            for key in configs:
                fit(*key, epochs=2, callbacks=[epoch_timer(rates[key], args.rows, epoch=1)])  # steady state
            rates["matmul"].record(*matmul_gflops(tf.float32, args.matmul_n, 3))
            print(f"round {round_ + 1} (samples/s; matmul GFLOP/s): " + ", ".join(
                f"{' '.join(key) if isinstance(key, tuple) else key} {rate.last(1)}" for key, rate in rates.items()),
                flush=True)

    figures = {}
    for suffix, best in best_rates(rates).items():
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
    figures["stream_over_memory_bound"] = serial_bound(figures["stream_over_memory_cpu"])
    for source in ("stream", "memory"):
        for compute, short in (("float32", "fp32"), ("bfloat16", "bf16")):
            figures[f"{source}_{short}_samples_s"] = rates[source, compute].best()
            figures[f"{source}_{short}_samples_s_cpu"] = rates[source, compute].best("cpu")
    figures.update({"stream_data_only_samples_s": data.best(), "stream_data_only_samples_s_cpu": data.best("cpu")})
    figures.update({"util_min": util_min(rates), "batch_size": args.batch_size, "rows": args.rows, "cores": CORES})
    print(f"stream_over_memory = samples/s streamed from HDF5 (features.shuffled_batches through finetune._dataset) / "
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
    print_util_min(figures["util_min"])
    print_figures(figures)


if __name__ == "__main__":
    main()
