"""Benchmark of one training step of VGG16's dense part (what the transfer and finetune stages repeat) against its
bound on this machine (`roofline.py`, measured in the same run) and against a plain Keras model's step.

The model: `models.split(models.vgg16("none"))`'s dense part (25088 -> 4096 -> 4096 -> 1000, random weights) with
calibrated BN after fc1 and fc2 from `surgery.insert_bn` (synthetic statistics) and, as in VGG16, Dropout(0.5)
after each of them; fp32, under `training.seed_everything` (op determinism). The step is the pipeline's own, what
the finetune and transfer stages run: `training.for_training` (each Dense a `TransposedDense`: kernel stored
transposed, in pieces), `training.compile_for_training` (`optimizers.FusedAdam`), then
`training.Trainer(model, tf.distribute.get_strategy()).train_batch(x, y)` (forward in training mode, sparse
cross-entropy, a gradient tape and `optimizer.apply` inside `strategy.run` in a `tf.function`; it returns the loss
and accuracy sums as floats). A second copy of the model, plain Dense layers compiled with Keras' Adam, trains
through the same `Trainer` step (today's Keras way, for `speedup`).

The least a step must cost, with W the trainable weights, K the Dense kernels' weights, K1 fc1's and b the batch:
- bytes: 28 W: the forward pass reads every weight once (4 bytes), and Adam reads and writes the weight and both
  its slots (3 x 8). The gradient is left out: a kernel piece's gradient (8 MiB, `training.chunks`) can be updated
  while it is still in cache.
- FLOPs: 2 b K forward + 2 b K weight gradients + 2 b (K - K1) input gradients: fc1's input gradient (the
  features') is never computed in the traced step.
The bound is the larger of bytes / the roofline's bandwidth and FLOPs / its matmul rate (the best of the step's own
shapes, fc1's forward and kernel gradient at batch b, and 4096x4096). `step_over_bound_b<b>` = the step's time /
that bound: below 1 the benchmark fails (the bound is wrong). `speedup_b<b>` is a reference (the plain Keras step):
reported either side of 1. Beside it, to say where a step's time goes: `fwd_bwd_ms` (forward and
backward alone, every gradient computed, nothing applied) and `adam_ms` (`optimizer.apply` alone on fixed
gradients) against the same bytes.

Each configuration is traced and warmed up first, then all alternate for `--rounds` rounds, the roofline measured
again in each (its best rates of the run count); a configuration's time is its best round's mean step time
(wall; the CPU-time figures beside it read what the cores of our own would give).
`--smoke`: a dense part of 64 units on 7x7x16 inputs and small roofline arrays (seconds; its ratios are not
checked against 1: at that size everything sits in cache and a step is Python overhead, so no bound applies).

    python3 bench/transfer.py [--rounds 3] [--steps 4] [--smoke]
"""

from __future__ import annotations

import argparse
import math

from common import CORES, Rates, print_figures, print_load, print_util_min, util_min, vgg16_dense_part

import roofline

BATCHES = (16, 256)
SMOKE_BATCHES = (4, 32)


def dense_bn_dropout_model(smoke: bool = False):
    """VGG16's dense part (with `smoke`: a 7x7x16 -> 64 -> 64 -> 10 chain with the same layer names) with
    calibrated BN after fc1 and fc2 (synthetic statistics) and Dropout(0.5) after each."""
    import keras
    import numpy as np

    from vggbn.numerics import models, surgery

    dense = vgg16_dense_part(smoke)
    names = surgery.hidden_dense_names(dense)
    rng = np.random.default_rng(0)
    units = {layer.name: layer.units for layer in dense.layers if layer.name in names}
    stats = {name: (rng.uniform(0, 2, units[name]), rng.uniform(0.5, 4, units[name])) for name in names}
    with_bn = surgery.insert_bn(dense, stats)

    def dropout(layer):
        if layer.name.removesuffix("_bn") in names and layer.name.endswith("_bn"):
            return [(keras.layers.Dropout(0.5, seed=len(layer.name), name=f"{layer.name[:-3]}_dropout"), [])]
        return []

    return models.copy_chain(with_bn, name=with_bn.name, after=dropout)


def step_sizes(model) -> tuple[int, int, int]:
    """(trainable weights W, Dense kernel weights K, the first Dense kernel's K1) of a plain-Dense model."""
    import keras

    kernels = [int(math.prod(layer.kernel.shape)) for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    return sum(int(math.prod(v.shape)) for v in model.trainable_variables), sum(kernels), kernels[0]


def min_bytes(weights: int) -> int:
    """28 bytes a trainable weight: read by the forward pass (4), read and written by Adam with both slots (24)."""
    return 28 * weights


def min_flops(kernels: int, first_kernel: int, batch: int) -> int:
    """2 b K forward, 2 b K weight gradients, 2 b (K - K1) input gradients (none for the first layer's input)."""
    return 2 * batch * (3 * kernels - first_kernel)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds")
    parser.add_argument("--steps", type=int, default=4, help="training steps timed per configuration and round")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; ratios not held to >= 1")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.steps = 1, 2
    batches = SMOKE_BATCHES if args.smoke else BATCHES

    import keras
    import numpy as np
    import tensorflow as tf

    from vggbn.numerics import models, training

    print_load()
    training.seed_everything(0)
    model = dense_bn_dropout_model(args.smoke)
    weights, kernels, first_kernel = step_sizes(model)
    print(f"dense part ({', '.join(layer.name for layer in model.layers[1:])}): {weights / 1e6:.2f}M trainable "
          f"weights W ({kernels / 1e6:.2f}M in Dense kernels K, {first_kernel / 1e6:.2f}M in fc1's K1), fp32; a step "
          f"moves at least 28 W = {min_bytes(weights) / 1e9:.3f} GB and computes 2 b (3 K - K1) FLOPs")
    in_features = first_kernel // next(layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense))
    units = next(layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense))
    print("measuring the roofline (bandwidth kernels, matmul at the step's shapes and 4096x4096) ...", flush=True)
    def measure_roofline():
        return roofline.measure(shapes={name: shape for b in batches
                                        for name, shape in roofline.dense_shapes("fc1", units, in_features, b).items()},
                                square=256 if args.smoke else 4096, calls=2 if args.smoke else 3,
                                array_bytes=(8 << 20) if args.smoke else None)

    roof = measure_roofline()
    print(roof.describe(), flush=True)

    strategy = tf.distribute.get_strategy()
    # as train_on_features makes it for a training at each batch: kernel pieces at small batches only
    fused = {batch: training.for_training(models.copy_chain(model, name=model.name), batch) for batch in batches}
    for each in fused.values():
        training.compile_for_training(each, 1e-4)
    pieces = {batch: each.get_layer("fc1").chunks for batch, each in fused.items()}
    keras_model = dense_bn_dropout_model(args.smoke)
    keras_model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-4),
                        loss=keras.losses.SparseCategoricalCrossentropy())
    trainers = {**{("fused", batch): training.Trainer(each, strategy) for batch, each in fused.items()},
                "keras": training.Trainer(keras_model, strategy)}
    del model

    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    def forward_backward(model):
        variables = model.trainable_variables

        @tf.function
        def run(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, variables)
            return loss + tf.add_n([tf.reduce_sum(g[:1]) for g in grads])  # every gradient computed, nothing applied
        return run

    fwd_bwd = {batch: forward_backward(each) for batch, each in fused.items()}
    adam_model = fused[batches[0]]  # in pieces: what an Adam update of a small batch's step applies
    variables = adam_model.trainable_variables
    fixed_grads = [tf.fill(v.shape, 1e-6) for v in variables]

    @tf.function
    def adam_alone():
        adam_model.optimizer.apply(fixed_grads, variables)
        return variables[0][0, 0]

    steps = {"fused": lambda batch, x, y: trainers["fused", batch].train_batch(x, y),
             "keras": lambda batch, x, y: trainers["keras"].train_batch(x, y),
             "fwd_bwd": lambda batch, x, y: float(fwd_bwd[batch](x, y))}
    rng = np.random.default_rng(0)
    data = {batch: (tf.constant(rng.standard_normal((batch, *keras_model.input_shape[1:]), dtype=np.float32)),
                    tf.constant(rng.integers(0, 10, batch, dtype=np.int32))) for batch in batches}
    rates = {(name, batch): Rates() for batch in batches for name in steps}
    rates["adam"] = Rates()

    print("fc1's kernel in " + ", ".join(f"{n} pieces at batch {b}" for b, n in pieces.items())
          + " (training.chunks)")
    print("warm-up: 2 steps of each configuration (traces, creates each optimizer's slots)")
    for (name, batch) in [key for key in rates if isinstance(key, tuple)]:
        for _ in range(2):
            steps[name](batch, *data[batch])
    for _ in range(2):
        float(adam_alone())

    for round_ in range(args.rounds):
        if round_:
            roof = roof.merged(measure_roofline())  # again each round: the best of the run counts
        for key in rates:
            if key == "adam":
                rates[key].time(lambda: [float(adam_alone()) for _ in range(args.steps)], args.steps)
                continue
            name, batch = key
            step, (x, y) = steps[name], data[batch]
            rates[key].time(lambda: [step(batch, x, y) for _ in range(args.steps)], args.steps)  # waits for floats
        print(f"round {round_ + 1} (ms a step): " + ", ".join(
            f"{' b'.join(map(str, key)) if isinstance(key, tuple) else key} {1e3 / rates[key].wall[-1]:.1f}"
            for key in rates), flush=True)

    figures, bounds, references = {}, {}, {}
    for kind, suffix in (("wall", ""), ("cpu", "_cpu")):
        best = {key: rate.best(kind) for key, rate in rates.items()}
        for batch in batches:
            bound_s = roof.bound_s(min_bytes(weights), min_flops(kernels, first_kernel, batch))
            figures[f"step_over_bound_b{batch}{suffix}"] = 1 / best["fused", batch] / bound_s
            figures[f"speedup_b{batch}{suffix}"] = best["fused", batch] / best["keras", batch]
            if not suffix:
                bounds[f"step_over_bound_b{batch}"] = (
                    figures[f"step_over_bound_b{batch}"],
                    f"max(28 W bytes / {roof.bandwidth:.1f} GB/s ({roof.best_kernel}), 2 b (3 K - K1) FLOPs / "
                    f"{roof.gflops:.0f} GFLOP/s ({roof.best_matmul})) = {1e3 * bound_s:.1f} ms")
                figures.update({f"fused_ms_b{batch}": 1e3 / best["fused", batch],
                                f"keras_ms_b{batch}": 1e3 / best["keras", batch],
                                f"fwd_bwd_ms_b{batch}": 1e3 / best["fwd_bwd", batch],
                                f"fwd_bwd_gflops_b{batch}": min_flops(kernels, first_kernel, batch) / 1e9
                                * best["fwd_bwd", batch],
                                f"memory_bound_ms_b{batch}": 1e3 * roof.memory_s(min_bytes(weights)),
                                f"matmul_bound_ms_b{batch}": 1e3 * roof.compute_s(
                                    min_flops(kernels, first_kernel, batch))})
    figures["adam_ms"] = 1e3 / rates["adam"].best()
    figures["adam_gb_s"] = min_bytes(weights) / 1e9 * rates["adam"].best() * 24 / 28  # Adam's own 24 bytes a weight
    figures.update({**{f"{k}_gb_s": v for k, v in roof.kernels.items()}, **roof.figures(),
                    "util_min": util_min(rates), "cores": CORES})
    for batch in batches:
        print(f"batch {batch}: pipeline step {figures[f'fused_ms_b{batch}']:.1f} ms, plain Keras (Dense, Adam) step "
              f"{figures[f'keras_ms_b{batch}']:.1f} ms, forward + backward alone "
              f"{figures[f'fwd_bwd_ms_b{batch}']:.1f} ms; bound max(memory "
              f"{figures[f'memory_bound_ms_b{batch}']:.1f} ms, matmul {figures[f'matmul_bound_ms_b{batch}']:.1f} ms):"
              f" step_over_bound {figures[f'step_over_bound_b{batch}']:.2f} (target <= 1.5)")
    print(roof.describe())
    print(f"Adam alone (optimizer.apply on fixed gradients): {figures['adam_ms']:.1f} ms, "
          f"{figures['adam_gb_s']:.1f} GB/s counting 24 bytes a weight")
    print_util_min(figures["util_min"])
    references = {f"speedup_b{batch}": (figures[f"speedup_b{batch}"], "a plain Keras step (Dense, Keras' Adam)")
                  for batch in batches}
    roofline.check(bounds=bounds, references=references, enforce=not args.smoke)  # smoke: a cache-sized step
    last = {key: figures[key] for key in ("step_over_bound_b%d" % batches[0], "step_over_bound_b%d" % batches[1],
                                          "speedup_b%d" % batches[0], "speedup_b%d" % batches[1])}
    print_figures({**last, **{k: v for k, v in figures.items() if k not in last}})


if __name__ == "__main__":
    main()
