"""Benchmark of the finetune stage's training: VGG16's dense part with BN trained on batches streamed from an HDF5
feature file against the same rows from memory, and its training GFLOP/s against a large matmul, side by side in
one run.

The model: `models.split(models.vgg16("none"))`'s dense part (25088 -> 4096 -> 4096 -> 1000, random weights) with
calibrated BN from `surgery.insert_bn` (synthetic statistics), trained as `finetune.train_on_features` trains it:
`training.seed_everything`, `training.for_training` + `compile_for_training` (FusedAdam), `training.Trainer` under
the default strategy, an epoch through `training.train_epochs`. Streamed: `feed.Feed(path, batch, buffer,
tensors=True).epoch(seed)` (what `train_on_features` passes as its train batches) over a file written by
`features.build_feature_file`. In memory: the same rows as numpy arrays, batch after batch, through the same loop.
Each configuration is warmed up (tracing, Adam's slots), then the configurations alternate for `--rounds` rounds of
one epoch each.

Minimum work: FLOPs 2 b (3 K - K1) a batch (forward, weight gradients, input gradients but fc1's: K the Dense
kernels' weights, K1 fc1's), bytes 28 W a step (W trainable weights; see `transfer.py`). `train_gflops_over_matmul`
= the streamed training's GFLOP/s by that count / the roofline's matmul rate (`roofline.py`, same run, fc1's own
shapes among those it takes the best of): a bound, above 1 the benchmark fails (the bound is wrong).
`stream_over_memory` (and its bf16 twin) is a reference: reported either side of 1.

Every measurement gives two rates, wall and CPU (x cores; see bench/README.md on a shared machine);
`stream_over_memory_bound` is the worst case on cores of our own: the stream's extra CPU work not overlapped at
all, run on one core. `--smoke`: a 7x7x16 -> 64 -> 64 -> 10 dense part, 64 rows (seconds; ratios not checked:
at that size a step is Python overhead).

    python3 bench/finetune.py [--rows 2048] [--batch-size 256] [--rounds 3] [--smoke]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from common import CORES, Rates, best_rates, print_figures, print_load, print_util_min, serial_bound, util_min, vgg16_dense_part

import roofline
from transfer import min_flops, step_sizes


def dense_bn_model(smoke: bool):
    """VGG16's dense part (`smoke`: a 7x7x16 -> 64 -> 64 -> 10 chain) with calibrated BN after fc1 and fc2."""
    import numpy as np

    from vggbn.numerics import surgery

    dense = vgg16_dense_part(smoke)
    rng = np.random.default_rng(0)
    stats = {layer.name: (rng.uniform(0, 2, layer.units), rng.uniform(0.5, 4, layer.units))
             for layer in dense.layers if layer.name in surgery.hidden_dense_names(dense)}
    return surgery.insert_bn(dense, stats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2048, help="cached feature rows (100 kB each)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shuffle-buffer", type=int, default=4096, help="finetune.shuffle_buffer (rows)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; ratios not checked")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.batch_size, args.shuffle_buffer, args.rounds = 64, 16, 32, 1

    import numpy as np
    import tensorflow as tf

    from vggbn.numerics import models, training
    from vggbn.storage import feed
    from common import write_features

    print_load()
    training.seed_everything(0)
    base = dense_bn_model(args.smoke)
    row_shape = tuple(base.input_shape[1:])
    weights, kernels, first_kernel = step_sizes(base)
    steps = math.ceil(args.rows / args.batch_size)
    flops_per_epoch = sum(min_flops(kernels, first_kernel, min(args.batch_size, args.rows - i * args.batch_size))
                          for i in range(steps))
    units = next(layer.units for layer in base.layers if hasattr(layer, "units"))
    def measure_roofline():
        return roofline.measure(shapes=roofline.dense_shapes("fc1", units, first_kernel // units, args.batch_size),
                                square=256 if args.smoke else 4096, calls=2 if args.smoke else 3,
                                array_bytes=(8 << 20) if args.smoke else None, kernels=("numpy",))

    roof = measure_roofline()
    print(roof.describe(), flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        path = Path(tmp) / "train.h5"
        write_features(path, Path(tmp) / "work", args.rows, row_shape, classes=10 if args.smoke else 1000, seed=0,
                       block=256)
        import h5py

        with h5py.File(path, "r") as file:
            x, y = file["features"][:], file["labels"][:]
        print(f"{args.rows} rows of {row_shape} float32, batch {args.batch_size}, {steps} steps an epoch, shuffle "
              f"buffer {args.shuffle_buffer} rows", flush=True)
        strategy = tf.distribute.get_strategy()
        trainers = {}
        for compute in ("float32", "bfloat16"):
            for source in ("memory", "stream"):
                model = training.for_training(models.with_compute_dtype(models.copy_chain(base, name=base.name),
                                                                        compute))
                training.compile_for_training(model, 1e-4)
                trainers[source, compute] = training.Trainer(model, strategy)
        train_feed = feed.Feed(path, args.batch_size, args.shuffle_buffer, tensors=True)

        def batches(source, epoch):
            if source == "stream":
                return train_feed.epoch(epoch)
            order = np.random.default_rng(epoch).permutation(args.rows)
            return ((x[order[i:i + args.batch_size]], y[order[i:i + args.batch_size]])
                    for i in range(0, args.rows, args.batch_size))

        def epoch(key, number, rates=None):
            run = lambda: training.train_epochs(  # noqa: E731
                trainers[key], epochs=1, history=[], steps=steps, train_batches=lambda _: batches(key[0], number),
                valid_batches=lambda: [], hooks=training.EpochHooks(show_progress=False))
            rates.time(run, args.rows) if rates is not None else run()

        print("warm-up: an epoch of each configuration (traces the step, creates Adam's slots)", flush=True)
        for key in trainers:
            epoch(key, 0)
        data = Rates()
        data.time(lambda: [None for _ in train_feed.epoch(1)], args.rows)
        print(f"the feed alone (feed.Feed, no model): {data.best():.0f} samples/s wall", flush=True)
        rates = {key: Rates() for key in trainers}
        for round_ in range(args.rounds):
            if round_:
                roof = roof.merged(measure_roofline())  # again each round: the best of the run counts
            for key in trainers:
                epoch(key, round_ + 2, rates[key])
            print(f"round {round_ + 1} (samples/s): " + ", ".join(
                f"{' '.join(key)} {rate.last(1)}" for key, rate in rates.items()), flush=True)

    figures = {}
    for suffix, best in best_rates(rates).items():
        train_gflops = best["stream", "float32"] * flops_per_epoch / args.rows / 1e9
        figures.update({
            f"stream_over_memory{suffix}": best["stream", "float32"] / best["memory", "float32"],
            f"train_gflops_over_matmul{suffix}": train_gflops / roof.gflops,
            f"train_gflops{suffix}": train_gflops,
            f"bf16_stream_over_memory{suffix}": best["stream", "bfloat16"] / best["memory", "bfloat16"],
        })
    bounds = {"matmul_over_train_gflops": (1 / figures["train_gflops_over_matmul"],
                                           f"2 b (3 K - K1) FLOPs at {roof.gflops:.0f} GFLOP/s ({roof.best_matmul})")}
    references = {"stream_over_memory": (figures["stream_over_memory"], "the same loop on the rows from memory, fp32"),
                  "bf16_stream_over_memory": (figures["bf16_stream_over_memory"],
                                              "the same loop on the rows from memory, bf16")}
    figures["stream_over_memory_bound"] = serial_bound(figures["stream_over_memory_cpu"])
    for source in ("stream", "memory"):
        for compute, short in (("float32", "fp32"), ("bfloat16", "bf16")):
            figures[f"{source}_{short}_samples_s"] = rates[source, compute].best()
    figures.update({"feed_only_samples_s": data.best(), **roof.figures(), "util_min": util_min(rates),
                    "batch_size": args.batch_size, "rows": args.rows, "cores": CORES})
    print(f"stream_over_memory = samples/s streamed (feed.Feed) / samples/s from memory, the same Trainer loop, fp32, "
          f"batch {args.batch_size}: wall {figures['stream_over_memory']:.3f}, cpu "
          f"{figures['stream_over_memory_cpu']:.3f} (target >= 0.9); train_gflops_over_matmul "
          f"{figures['train_gflops_over_matmul']:.3f} (target >= 0.7)")
    print_util_min(figures["util_min"])
    roofline.check(bounds=bounds, references=references, enforce=not args.smoke)  # smoke: a step is Python overhead
    print_figures(figures)


if __name__ == "__main__":
    main()
