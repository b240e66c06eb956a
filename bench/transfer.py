"""Benchmark of one training step of VGG16's dense part (what the transfer and finetune stages repeat) against a
plain Keras model's step (Dense, Keras' Adam), and against the step's bound on this machine, measured in one run.

The model: `models.split(models.vgg16("none"))`'s dense part (25088 -> 4096 -> 4096 -> 1000, random weights) with
calibrated BN after fc1 and fc2 from `surgery.insert_bn` (synthetic statistics) and, as in VGG16, Dropout(0.5)
after each of them; fp32, under `training.seed_everything` (op determinism). The step is the pipeline's own, what
the finetune and transfer stages run: `training.for_training` (each Dense a `TransposedDense`: kernel stored
transposed, in pieces), `training.compile_for_training` (`optimizers.FusedAdam`), then
`training.Trainer(model, tf.distribute.get_strategy()).train_batch(x, y)` (forward in training mode, sparse
cross-entropy, a gradient tape and `optimizer.apply` inside `strategy.run` in a `tf.function`; it returns the loss
and accuracy sums as floats). A second copy of the model, plain Dense layers compiled with Keras' Adam, trains
through the same `Trainer` step (today's Keras way, for `speedup`).

The bound of a step is the larger of two:
- memory: an Adam step must at least write the gradient and read it back, and read and write the weights and both
  slots: 8 x 4 bytes per trainable weight, over the machine's memory bandwidth. The bandwidth is STREAM's "add"
  measured in TensorFlow (`x + y` on 124M-float arrays, counted as STREAM counts it: 2 reads and 1 write per
  element); an in-place axpy (`ResourceApplyGradientDescent`, which needs no write-allocate) streams faster, and
  the bound against it is reported beside (`_inplace` keys).
- matmul: 6 FLOP per Dense-kernel weight per sample (forward, input gradient, weight gradient) at the rate of a
  4096x4096 fp32 `tf.linalg.matmul`.

Each configuration is traced and warmed up first, then all alternate for `--rounds` rounds; a configuration's time
is its best round's mean step time (wall; the CPU-time figures beside it read what the cores of our own would give).

    python3 bench/transfer.py [--rounds 3] [--steps 4]
"""

from __future__ import annotations

import argparse
import gc
import math
import time

from common import CORES, Rates, matmul_gflops, print_figures, print_load, print_util_min, util_min

BATCHES = (16, 256)


def dense_bn_dropout_model():
    """VGG16's dense part with calibrated BN after fc1 and fc2 (synthetic statistics) and Dropout(0.5) after each."""
    import keras
    import numpy as np

    from vggbn.numerics import models, surgery

    _, dense = models.split(models.vgg16("none"))
    names = surgery.hidden_dense_names(dense)
    rng = np.random.default_rng(0)
    stats = {name: (rng.uniform(0, 2, 4096), rng.uniform(0.5, 4, 4096)) for name in names}
    with_bn = surgery.insert_bn(dense, stats)

    def dropout(layer):
        if layer.name.removesuffix("_bn") in names and layer.name.endswith("_bn"):
            return [(keras.layers.Dropout(0.5, seed=len(layer.name), name=f"{layer.name[:-3]}_dropout"), [])]
        return []

    return models.copy_chain(with_bn, name=with_bn.name, after=dropout)


def bandwidth(n: int, rates: dict[str, Rates], calls: int = 3) -> None:
    """One round of the two bandwidth measurements over `n`-float arrays, recorded as GB/s (3 x 4n bytes a call)."""
    import tensorflow as tf

    x = tf.random.stateless_uniform([n], seed=(5, 6))
    y = tf.random.stateless_uniform([n], seed=(7, 8))
    var = tf.Variable(x)
    alpha = tf.constant(1e-3)
    gb = 3 * 4 * n / 1e9

    def add():
        (x + y)[0].numpy()

    def axpy():
        tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=alpha, delta=y)
        var[0].numpy()

    for name, work in (("add", add), ("axpy", axpy)):
        work()
        for _ in range(calls):
            rates[name].time(work, gb)
    del x, y, var
    gc.collect()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds")
    parser.add_argument("--steps", type=int, default=4, help="training steps timed per configuration and round")
    parser.add_argument("--matmul-n", type=int, default=4096)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from vggbn.numerics import training

    print_load()
    training.seed_everything(0)
    model = dense_bn_dropout_model()
    weights = sum(int(math.prod(v.shape)) for v in model.trainable_variables)
    kernels = sum(int(math.prod(layer.kernel.shape)) for layer in model.layers
                  if isinstance(layer, keras.layers.Dense))
    adam_bytes = 8 * 4 * weights
    print(f"dense part ({', '.join(layer.name for layer in model.layers[1:])}): {weights / 1e6:.2f}M trainable "
          f"weights ({kernels / 1e6:.2f}M in Dense kernels), fp32; an Adam step touches at least "
          f"{adam_bytes / 1e9:.2f} GB (8 x 4 bytes a weight)")

    # The pipeline's own step (what finetune and transfer run): compile_for_training (FusedAdam), then
    # Trainer.train_batch under the default strategy. Keras' Adam: a second copy of the model, the same step.
    strategy = tf.distribute.get_strategy()
    model = training.for_training(model)
    training.compile_for_training(model, 1e-4)
    keras_model = dense_bn_dropout_model()
    keras_model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-4),
                        loss=keras.losses.SparseCategoricalCrossentropy())
    trainers = {"fused": training.Trainer(model, strategy), "keras": training.Trainer(keras_model, strategy)}

    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    variables = model.trainable_variables

    @tf.function
    def forward_backward(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, variables)
        return loss + tf.add_n([tf.reduce_sum(g[:1]) for g in grads])  # every gradient computed, nothing applied

    steps = {"fused": trainers["fused"].train_batch, "keras": trainers["keras"].train_batch,
             "fwd_bwd": lambda x, y: float(forward_backward(x, y))}
    rng = np.random.default_rng(0)
    data = {batch: (tf.constant(rng.standard_normal((batch, *model.input_shape[1:]), dtype=np.float32)),
                    tf.constant(rng.integers(0, 1000, batch, dtype=np.int32))) for batch in BATCHES}
    rates = {(name, batch): Rates() for batch in BATCHES for name in steps}
    rates.update({"add": Rates(), "axpy": Rates(), "matmul": Rates()})

    print("warm-up: 2 steps of each configuration (traces, creates each optimizer's slots)")
    for (name, batch) in [key for key in rates if isinstance(key, tuple)]:
        for _ in range(2):
            steps[name](*data[batch])

    for round_ in range(args.rounds):
        bandwidth(weights, rates)
        rates["matmul"].record(*matmul_gflops(tf.float32, args.matmul_n, 3))
        for key in [key for key in rates if isinstance(key, tuple)]:
            name, batch = key
            step, (x, y) = steps[name], data[batch]

            def run():
                for _ in range(args.steps):
                    step(x, y)  # returns floats: each step waits for its result, as train_epochs does

            rates[key].time(run, args.steps)
        print(f"round {round_ + 1} (ms a step; GB/s; GFLOP/s): " + ", ".join(
            f"{name} b{batch} {1e3 / rates[name, batch].wall[-1]:.0f}" for name, batch in
            [key for key in rates if isinstance(key, tuple)]) + ", " + ", ".join(
            f"{name} {max(rates[name].wall[-3:] if name != 'matmul' else rates[name].wall[-1:]):.1f}"
            for name in ("add", "axpy", "matmul")), flush=True)

    figures = {}
    for kind, suffix in (("wall", ""), ("cpu", "_cpu")):
        best = {key: rate.best(kind) for key, rate in rates.items()}
        for batch in BATCHES:
            step_s = 1 / best["fused", batch]
            memory_s = adam_bytes / 1e9 / best["add"]
            memory_inplace_s = adam_bytes / 1e9 / best["axpy"]
            matmul_s = 6 * kernels * batch / 1e9 / best["matmul"]
            figures[f"step_over_bound_b{batch}{suffix}"] = step_s / max(memory_s, matmul_s)
            figures[f"speedup_b{batch}{suffix}"] = best["fused", batch] / best["keras", batch]
            figures[f"step_over_bound_inplace_b{batch}{suffix}"] = step_s / max(memory_inplace_s, matmul_s)
            if not suffix:
                figures.update({f"fused_ms_b{batch}": 1e3 * step_s, f"keras_ms_b{batch}": 1e3 / best["keras", batch],
                                f"fwd_bwd_ms_b{batch}": 1e3 / best["fwd_bwd", batch],
                                f"memory_bound_ms_b{batch}": 1e3 * memory_s,
                                f"memory_bound_inplace_ms_b{batch}": 1e3 * memory_inplace_s,
                                f"matmul_bound_ms_b{batch}": 1e3 * matmul_s})
    figures.update({"add_gb_s": rates["add"].best(), "axpy_gb_s": rates["axpy"].best(),
                    "matmul_gflops": rates["matmul"].best(), "util_min": util_min(rates), "cores": CORES})
    for batch in BATCHES:
        print(f"batch {batch}: pipeline step {figures[f'fused_ms_b{batch}']:.0f} ms, plain Keras (Dense, Adam) step "
              f"{figures[f'keras_ms_b{batch}']:.0f} ms, forward + backward alone {figures[f'fwd_bwd_ms_b{batch}']:.0f} "
              f"ms; bound max(memory {figures[f'memory_bound_ms_b{batch}']:.0f} ms (in-place axpy's bandwidth: "
              f"{figures[f'memory_bound_inplace_ms_b{batch}']:.0f}), matmul {figures[f'matmul_bound_ms_b{batch}']:.0f}"
              f" ms): step_over_bound {figures[f'step_over_bound_b{batch}']:.2f} (target <= 1.5)")
    print(f"bandwidth: STREAM add {figures['add_gb_s']:.1f} GB/s, in-place axpy {figures['axpy_gb_s']:.1f} GB/s; "
          f"matmul {figures['matmul_gflops']:.0f} GFLOP/s ({args.matmul_n}x{args.matmul_n} fp32)")
    print_util_min(figures["util_min"])
    last = {key: figures[key] for key in ("step_over_bound_b16", "step_over_bound_b256", "speedup_b16",
                                          "speedup_b256")}
    print_figures({**last, **{k: v for k, v in figures.items() if k not in last}})


if __name__ == "__main__":
    main()
