"""The training loop of every stage that trains, under any `tf.distribute` strategy: seeding, compiling, the step,
per-epoch logs, progress and dvclive curves."""

from __future__ import annotations

import functools
import itertools
import logging
import shutil
import threading
from typing import Callable, Iterable, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from vggbn import compat
from vggbn import console
from vggbn.cluster import distribute, watchdog
from vggbn.numerics import models, optimizers

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Same params, same weights: seeded Python/numpy/TF RNGs and deterministic TF kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def compile_for_training(model: keras.Model, lr: float) -> None:
    """Adam (`optimizers.FusedAdam`: Keras' Adam in one fused kernel), sparse cross-entropy and accuracy. A model
    computing in float16 (`models.with_compute_dtype`) gets Keras' dynamic loss scaling (`LossScaleOptimizer`):
    float16 gradients of small losses underflow to zero without it."""
    optimizer = optimizers.FusedAdam(learning_rate=lr)
    if any(layer.dtype_policy.name == "mixed_float16" for layer in model.layers):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


@tf.custom_gradient
def _matmul_transposed_kernel(x, kernel_t):
    """`x @ transpose(kernel_t)` for a kernel stored (out, in), computed as `transpose(kernel_t @ x^T)`: at a small
    batch the large matrix is then the left operand, which the CPU's GEMM streams once instead of packing it first
    (VGG16's fc1 at batch 16: about 32 ms instead of 49). The gradients: `dy @ kernel_t` for `x`, `dy^T @ x` for the
    kernel (written in the kernel's (out, in) layout); a gradient nobody uses is never computed in a traced step."""
    y = tf.transpose(tf.matmul(kernel_t, x, transpose_b=True))

    def gradient(dy):
        return tf.matmul(dy, kernel_t), tf.matmul(dy, x, transpose_a=True)

    return y, gradient


@keras.saving.register_keras_serializable(package="vggbn")
class TransposedDense(keras.layers.Layer):
    """A `keras.layers.Dense` for training only: the same function, with its kernel stored transposed, (units,
    input features), as `kernel_t`, so a training step at a small batch reads it at the memory's speed (see
    `_matmul_transposed_kernel`). Forward and gradients equal Dense's up to the order of floating-point sums.

    `for_training` puts it in place of each plain Dense layer of a chain and `for_saving` puts the plain Dense
    back (kernel transposed back, bit for bit): models saved by the stages hold standard Keras layers. A
    checkpoint saved during training holds this layer; it loads with safe_mode on (it is registered).
    """

    def __init__(self, units: int, activation=None, use_bias: bool = True, chunks: int = 1,
                 dense_config: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.use_bias, self.chunks = int(units), bool(use_bias), int(chunks)
        if self.chunks < 1 or self.units % self.chunks:
            raise ValueError(f"Expected `chunks` to divide units={units}. Received: chunks={chunks}")
        self.activation = keras.activations.get(activation)
        self.dense_config = dense_config  # the Dense layer's own config, to give it back as it was

    def build(self, input_shape):
        rows = self.units // self.chunks
        self.kernels_t = [self.add_weight(name=f"kernel_t_{i}", shape=(rows, int(input_shape[-1])),
                                          initializer="glorot_uniform") for i in range(self.chunks)]
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros") if self.use_bias else None

    @property
    def kernel_t(self):
        """The whole kernel, (units, input features)."""
        return keras.ops.concatenate([keras.ops.convert_to_tensor(k) for k in self.kernels_t], axis=0)

    def call(self, inputs):
        parts = [_matmul_transposed_kernel(inputs, tf.cast(kernel, self.compute_dtype)) for kernel in self.kernels_t]
        y = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)
        if self.bias is not None:
            y = y + tf.cast(self.bias, self.compute_dtype)
        return self.activation(y) if self.activation is not None else y

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "use_bias": self.use_bias, "chunks": self.chunks,
                "activation": keras.activations.serialize(self.activation), "dense_config": self.dense_config}


def _plain_dense(layer) -> bool:
    """A Dense layer `TransposedDense` can stand for: exactly Dense, 2-D input, nothing but kernel, bias and
    activation (no regularizer, constraint, LoRA or quantization)."""
    if type(layer) is not keras.layers.Dense or len(layer.input.shape) != 2:
        return False
    config = layer.get_config()
    return not any(config.get(key) for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
                                               "kernel_constraint", "bias_constraint", "lora_rank", "quantization_config"))


def _is_chain(model: keras.Model) -> bool:
    """A Sequential model, or a functional one whose layers after its InputLayer each take the previous one's
    output."""
    if isinstance(model, keras.Sequential):  # a chain by construction; it does not list its InputLayer
        return True
    layers = model.layers
    try:
        return (isinstance(layers[0], keras.layers.InputLayer)
                and all(layer.input is previous.output for previous, layer in zip(layers, layers[1:])))
    except (AttributeError, ValueError):  # a layer called more than once, or never
        return False


CHUNK_BYTES = 8 << 20
PIECES_UP_TO_BATCH = 32  # rows: above, a step is bound by its matmuls, which pieces slow down
NARROW_FLOATS = (tf.float16, tf.bfloat16)  # inputs a step takes as they are and casts to float32 on its device


def chunks(inputs: int, units: int, gpu: bool = False, batch_size: int | None = None) -> int:
    """Pieces a kernel of `inputs` x `units` is stored in while training: on a CPU at a batch of at most
    `PIECES_UP_TO_BATCH` rows (or an unknown one), the fewest that divide `units` into pieces of at most about
    `CHUNK_BYTES` (8 MiB: VGG16's fc1 in 64 pieces, fc2 in 8). Each piece's gradient is its own tensor, so its Adam
    update can run as soon as it is computed, while it is still in the CPU's cache, instead of after the whole
    411 MB gradient has gone to memory and come back. That pays where a step is bound by memory: a step moves 28
    bytes a weight and computes 6 b FLOPs a weight, so on CPUs (2 to 7 FLOPs a byte of bandwidth) a batch of more than
    about 32 rows is bound by its matmuls, and pieces only make them narrower (VGG16's dense part at batch 256:
    `bench/transfer.py`). On a GPU (`gpu`), or at a larger batch, one piece."""
    if gpu or (batch_size is not None and batch_size > PIECES_UP_TO_BATCH):
        return 1
    wanted = -(-inputs * units * 4 // CHUNK_BYTES)
    return next(n for n in range(max(wanted, 1), units + 1) if units % n == 0)


def for_training(model: keras.Model, batch_size: int | None = None) -> keras.Model:
    """`model` (a chain) with each plain Dense layer replaced by a `TransposedDense` computing the same, with the
    same name, dtype policy and weights (kernel transposed), stored in the pieces `chunks` says for a training at
    `batch_size` rows a step; `model` itself when it has none or is no chain."""
    if not any(_plain_dense(layer) for layer in model.layers) or not _is_chain(model):
        return model
    gpu = bool(tf.config.list_logical_devices("GPU"))  # where the training runs: kernel pieces only on a CPU

    def convert(layer):
        if not _plain_dense(layer):
            return None
        config = layer.get_config()
        new = TransposedDense(config["units"], activation=config["activation"], use_bias=config["use_bias"],
                              name=layer.name, dtype=config.get("dtype"), trainable=layer.trainable,
                              chunks=chunks(*layer.kernel.shape, gpu=gpu, batch_size=batch_size), dense_config=config)
        kernel, *bias = layer.get_weights()
        return new, [*np.split(kernel.T.copy(), new.chunks), *bias]

    return models.copy_chain(model, convert=convert)


def for_saving(model: keras.Model) -> keras.Model:
    """`model` with each `TransposedDense` back as the plain `keras.layers.Dense` it stands for (kernel transposed
    back: bit for bit the trained weights); `model` itself when it has none."""
    if not any(isinstance(layer, TransposedDense) for layer in model.layers):
        return model

    def convert(layer):
        if not isinstance(layer, TransposedDense):
            return None
        config = {**(layer.dense_config or {}), "units": layer.units, "use_bias": layer.use_bias,
                  "activation": keras.activations.serialize(layer.activation), "name": layer.name,
                  "dtype": layer.dtype_policy, "trainable": layer.trainable}
        new = keras.layers.Dense.from_config(config)
        weights = layer.get_weights()
        kernel_t = np.concatenate(weights[:layer.chunks], axis=0)
        return new, [kernel_t.T.copy(), *weights[layer.chunks:]]

    return models.copy_chain(model, convert=convert)


@distribute.chief_only
def live_logger(live_dir, history: list[dict]):
    """A fresh dvclive logger in `live_dir` holding the epochs already done, named as its Keras callback names them.

    It neither edits dvc.yaml nor saves experiments itself: the curves are declared as plots in dvc.yaml.
    """
    from dvclive import Live

    shutil.rmtree(live_dir, ignore_errors=True)
    live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    for logs in history:
        log_epoch(live, logs)
    return live


class Trainer:
    """One training loop for every `tf.distribute` strategy (Keras' `fit` fails under MultiWorkerMirroredStrategy,
    keras-team/keras#20585): `model` (compiled with `compile_for_training`, built under the strategy's scope) is
    trained batch by batch with `strategy.run`.

    Global-batch semantics: each worker passes the global batch (`train_batch(x, y)`, every worker the same), or only
    its own rows of it (`train_batch(x, y, count)`: rows `distribute.split(count, workers)[index]` of a global batch of
    `count` rows, which is all a worker then reads); replica r takes a contiguous slice of the global batch, the
    loss is the global batch's mean (each replica's sum over its rows divided by the global row count, gradients
    summed across replicas), and BatchNormalization layers normalize by the global batch's statistics
    (`synchronized`), and Dropout drops what it drops over the global batch. So N replicas train what one process
    trains, up to the order of floating-point sums. With one replica it is a plain traced step.
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, worker: tuple[int, int] = (0, 1)):
        """`worker`: (this worker's index, the workers), as `distribute.worker()` says; its replicas are replicas
        index * R to (index + 1) * R - 1 of the strategy's, R = replicas / workers."""
        self.model, self.strategy = model, strategy
        self.replicas = int(strategy.num_replicas_in_sync)
        self.worker_index, self.workers = worker
        if self.replicas % self.workers:
            raise ValueError(f"Expected the same replicas on every worker. Received: {self.replicas} replicas, "
                             f"{self.workers} workers")
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
        self._unsynchronized = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
                                and not layer.synchronized] if self.replicas > 1 else []
        for layer in self._unsynchronized:
            layer.synchronized = True
        self._rows = threading.local()
        self._dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)
                          and layer.noise_shape is None] if self.replicas > 1 else []
        for layer in self._dropouts:
            compat.replace_call(layer, functools.partial(self._global_batch_dropout, layer))
        self._train = tf.function(self._train_replicas, reduce_retracing=True)
        self._evaluate = tf.function(self._evaluate_replicas, reduce_retracing=True)

    def _slices(self, x, y, count: int | None):
        """Per replica, its contiguous slice of the global batch, the index of its first row and its row count; and
        the global batch's row count. Workers split the batch by `distribute.split`, and each worker's replicas
        split its rows by it again. `count` None: `x` is the whole global batch; else `x` holds this worker's rows.

        Every replica's slice is padded with zero rows to the largest one's, so every worker passes the traced step
        tensors of the same shapes and traces it when the others do: a collective keeps the instance key it got
        when traced (`compat.one_instance_key_per_collective`), and a worker tracing alone would pair its
        collectives with the wrong ones of the others (a batch of 63 rows: 32 match the trace of full batches, 31
        do not). The step drops the padding before the model sees it."""
        x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y, tf.int32)
        if x.dtype not in NARROW_FLOATS:  # float16 features stay float16 to the device, which casts them (exactly)
            x = tf.cast(x, tf.float32)
        rows = int(y.shape[0])
        count = rows if count is None else int(count)
        mine = distribute.split(count, self.workers)[self.worker_index] if rows != count else slice(0, count)
        if rows != mine.stop - mine.start:
            raise ValueError(f"Expected this worker's rows of a global batch of {count}. Received {rows} rows "
                             f"(worker {self.worker_index} of {self.workers})")
        if self.replicas == 1:
            return x, y, tf.constant(0), tf.constant(rows), tf.constant(float(count), tf.float32)
        local = self.replicas // self.workers  # global replica id = worker * local + k
        bounds = [(worker.start + part.start, worker.start + part.stop)
                  for worker in distribute.split(count, self.workers)
                  for part in distribute.split(worker.stop - worker.start, local)]
        offset, span = mine.start, max(stop - first for first, stop in bounds)

        def part(context):
            first, stop = bounds[context.replica_id_in_sync_group]
            return (padded(x[first - offset:stop - offset], span), padded(y[first - offset:stop - offset], span),
                    tf.constant(first), tf.constant(stop - first))
        x, y, first, rows = self.strategy.experimental_distribute_values_from_function(part)
        return x, y, first, rows, tf.constant(float(count), tf.float32)

    def _sums(self, probabilities, y):
        losses = keras.losses.sparse_categorical_crossentropy(y, probabilities)
        correct = tf.cast(tf.equal(tf.argmax(probabilities, axis=-1, output_type=tf.int32), y), tf.float32)
        return tf.reduce_sum(losses), tf.reduce_sum(correct)

    def _train_replicas(self, x, y, first, rows, count):
        def step(x, y, first, rows):
            x, y = x[:rows], y[:rows]  # the replica's own rows, without the padding that evened out the shapes
            # for the global batch's dropout masks, while tracing; MirroredStrategy traces each replica in a thread
            self._rows.value = (first, tf.cast(count, tf.int32))
            with tf.GradientTape() as tape:
                probabilities = self.model(tf.cast(x, tf.float32), training=True)
                loss_sum, correct = self._sums(tf.cast(probabilities, tf.float32), y)
                loss = loss_sum / count
                scaled = self.model.optimizer.scale_loss(loss)  # the loss itself, but under loss scaling (float16)
            variables = self.model.trainable_variables
            self.model.optimizer.apply(tape.gradient(scaled, variables), variables)  # gradients summed over replicas
            return loss_sum, correct
        return self._reduced(self.strategy.run(step, args=(x, y, first, rows)))

    def _evaluate_replicas(self, x, y, rows):
        def step(x, y, rows):
            x, y = x[:rows], y[:rows]
            return self._sums(tf.cast(self.model(tf.cast(x, tf.float32), training=False), tf.float32), y)
        return self._reduced(self.strategy.run(step, args=(x, y, rows)))

    def _reduced(self, per_replica):
        return tuple(self.strategy.reduce("SUM", value, axis=None) for value in per_replica)

    def finish(self) -> keras.Model:
        """The model as it came (BN layers no longer `synchronized`: a saved model is the same whatever the
        strategy that trained it), each `TransposedDense` back as a plain Dense (`for_saving`)."""
        for layer in self._unsynchronized:
            layer.synchronized = False
        for layer in self._dropouts:
            compat.restore_call(layer)
        return for_saving(self.model)

    def _global_batch_dropout(self, layer: keras.layers.Dropout, inputs, training=False):
        """Dropout as one process draws it over the whole global batch, this replica's rows of it: each replica
        draws the global batch's mask from the same seed (the generator's state is the same on every replica) and
        keeps its slice, so N replicas drop exactly what one process drops."""
        if not training or layer.rate <= 0:
            return inputs
        first, count = self._rows.value
        shape = tf.concat([[count], tf.shape(inputs)[1:]], axis=0)
        # Keras' Dropout.call draws its mask just so: keras.random.dropout with the layer's seed generator
        kept = keras.random.dropout(tf.ones(shape, inputs.dtype), layer.rate, seed=layer.seed_generator)
        return inputs * kept[first:first + tf.shape(inputs)[0]]

    def train_batch(self, x, y, count: int | None = None) -> tuple[float, float]:
        """One optimizer step on a global batch: (sum of its losses, correct predictions), over all replicas. `x`, `y`:
        the global batch, or (`count` given) this worker's rows of a global batch of `count` rows."""
        x, y, first, rows, count = self._slices(x, y, count)
        with watchdog.waiting("a training step"):  # a hung or dead peer ends this worker
            loss_sum, correct = self._train(x, y, first, rows, count)
            return float(loss_sum), float(correct)

    def evaluate_batch(self, x, y, count: int | None = None) -> tuple[float, float]:
        x, y, _, rows, _ = self._slices(x, y, count)
        with watchdog.waiting("an evaluation step"):
            loss_sum, correct = self._evaluate(x, y, rows)
            return float(loss_sum), float(correct)


def padded(rows: tf.Tensor, count: int) -> tf.Tensor:
    """`rows` with zero rows after them up to `count` rows (`rows` itself when it has them)."""
    missing = count - int(rows.shape[0])
    if not missing:
        return rows
    return tf.concat([rows, tf.zeros((missing, *rows.shape[1:]), rows.dtype)], axis=0)


class Epochs:
    """Running sums of one epoch's losses and correct predictions: Keras' `loss` and `accuracy` logs."""

    def __init__(self):
        self.loss = self.correct = self.count = 0.0

    def add(self, loss_sum: float, correct: float, count: int) -> None:
        self.loss, self.correct, self.count = self.loss + loss_sum, self.correct + correct, self.count + count

    def logs(self, prefix: str = "") -> dict:
        count = max(self.count, 1)
        return {f"{prefix}loss": self.loss / count, f"{prefix}accuracy": self.correct / count}


def evaluate_batches(trainer: Trainer, batches) -> dict:
    """`val_loss` and `val_accuracy` over the batches (the model in inference mode): each (x, y), a global batch,
    or (x, y, count), this worker's rows of a global batch of `count` rows."""
    totals = Epochs()
    for x, y, *count in batches:
        rows = int(count[0]) if count else None
        totals.add(*trainer.evaluate_batch(x, y, rows), len(y) if rows is None else rows)
    return totals.logs("val_")


def log_epoch(live, logs: dict) -> None:
    """One epoch's logs to dvclive, through dvclive's own Keras callback (its names: `train/loss`, `eval/loss`, ...)."""
    from dvclive.keras import DVCLiveCallback

    DVCLiveCallback(live=live).on_epoch_end(live.step, logs)


class EpochHooks(NamedTuple):
    """What runs around a training's epochs: `check(logs, where)` (may raise: per batch, with the batch's loss, and
    per epoch, before anything is saved), `after_epoch(epoch)` (a checkpoint), the dvclive logger `live`, and
    whether each epoch shows a progress bar."""
    check: Callable[[dict, str], None] | None = None
    after_epoch: Callable[[int], None] | None = None
    live: object = None
    show_progress: bool = True


def train_epochs(trainer: Trainer, *, epochs: int, history: list[dict], train_batches: Callable[[int], Iterable],
                 steps: int, valid_batches: Callable[[], Iterable], hooks: EpochHooks = EpochHooks()) -> None:
    """Train from epoch `len(history)` to `epochs`: each epoch `steps` global batches of `train_batches(epoch)`
    (each (x, y), or (x, y, count): this worker's rows of a global batch of `count`), then the valid batches; its
    logs (loss, accuracy, val_loss, val_accuracy) appended to `history`, passed to `hooks.check`, then
    `hooks.after_epoch(epoch)`, and logged to `hooks.live`.
    """
    check, after_epoch, live, show_progress = hooks
    for epoch in range(len(history), epochs):
        totals = Epochs()
        bar = console.open_progress(steps, f"epoch {epoch + 1}/{epochs}", "batch") if show_progress else None
        for number, (x, y, *count) in enumerate(itertools.islice(train_batches(epoch), steps)):
            rows = int(count[0]) if count else len(y)
            loss_sum, correct = trainer.train_batch(x, y, rows if count else None)
            if check is not None:
                check({"loss": loss_sum / max(rows, 1)}, f"epoch {epoch + 1}, batch {number + 1}")
            totals.add(loss_sum, correct, rows)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        logs = {**totals.logs(), **evaluate_batches(trainer, valid_batches())}
        log.debug("epoch %d/%d: %s", epoch + 1, epochs, ", ".join(f"{k} {v:.4f}" for k, v in logs.items()))
        if check is not None:
            check(logs, f"epoch {epoch + 1}")
        history.append(logs)
        if after_epoch is not None:
            after_epoch(epoch)
        if live is not None:
            log_epoch(live, logs)
