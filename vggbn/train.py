"""Fine-tune a dense part on cached features streamed from HDF5, resumable from per-epoch checkpoints."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from itertools import count
from pathlib import Path

import keras
import tensorflow as tf

from vggbn import features, models
from vggbn.atomic import atomic_path, write_json
from vggbn.listing import file_md5
from vggbn.scoring import Score

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Same params, same weights: seeded Python/numpy/TF RNGs and deterministic TF kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def with_dropout(model: keras.Model, rate: float) -> keras.Model:
    """A copy of `model` whose Dropout layers drop `rate` of their inputs while training."""
    def set_rate(layer, config):
        return {**config, "rate": rate} if isinstance(layer, keras.layers.Dropout) else config
    return models.copy_chain(model, name=model.name, configure=set_rate)


def compile_for_training(model: keras.Model, lr: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def _dataset(generator, row_shape) -> tf.data.Dataset:
    signature = (tf.TensorSpec((None, *row_shape), tf.float32), tf.TensorSpec((None,), tf.int32))
    # No tf.data autotune thread: deleting a finished iterator (Keras makes a new validation one each epoch) waits
    # for it, and it can miss the cancellation and sleep out its period, up to a minute (see images.image_dataset).
    options = tf.data.Options()
    options.autotune.enabled = False
    return tf.data.Dataset.from_generator(generator, output_signature=signature).prefetch(2).with_options(options)


class _Checkpoint(keras.callbacks.Callback):
    """Saves model and optimizer after each epoch, atomically, with the epoch number beside it.

    `epoch.json` names the checkpoint file of its epoch and holds the dropout RNG states, which `model.save` does
    not keep: a kill between writing the two files leaves the previous epoch's pair, and a resumed run draws the
    same dropout masks as one that never stopped.
    """

    def __init__(self, work_dir: Path, history: list[dict]):
        super().__init__()
        self.work_dir, self.history = work_dir, history

    def on_epoch_end(self, epoch, logs=None):
        name = f"checkpoint-{epoch:04d}.keras"
        with atomic_path(self.work_dir / name) as tmp:
            self.model.save(tmp)
        self.history.append(_floats(logs))
        state = {"epoch": epoch, "checkpoint": name, "rng": _rng_states(self.model), "history": self.history}
        write_json(self.work_dir / "epoch.json", state)
        for old in self.work_dir.glob("checkpoint*.keras"):
            if old.name != name:
                old.unlink()


def _seed_generators(model: keras.Model) -> dict[str, list]:
    """layer name -> the layer's SeedGenerators (Dropout's masks come from them), in attribute order."""
    return {layer.name: [value for value in vars(layer).values() if isinstance(value, keras.random.SeedGenerator)]
            for layer in model.layers}


def _rng_states(model: keras.Model) -> dict[str, list]:
    return {name: [g.state.numpy().tolist() for g in gens] for name, gens in _seed_generators(model).items() if gens}


def _restore_rng_states(model: keras.Model, states: dict[str, list]) -> None:
    for name, gens in _seed_generators(model).items():
        for generator, state in zip(gens, states.get(name, []), strict=True):
            generator.state.assign(state)


class _History(keras.callbacks.Callback):
    """Collects each epoch's logs, as _Checkpoint does, for runs without checkpoints."""

    def __init__(self, history: list[dict]):
        super().__init__()
        self.history = history

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(_floats(logs))


def _floats(logs) -> dict:
    return {key: float(value) for key, value in (logs or {}).items()}


def _resume(work_dir: Path, recipe: dict):
    """(model, per-epoch logs so far) from an interrupted run of the same recipe, else None."""
    stamp, epoch_file = work_dir / "recipe.json", work_dir / "epoch.json"
    text = json.dumps(recipe, sort_keys=True)
    state = json.loads(epoch_file.read_text()) if epoch_file.exists() else {}
    checkpoint = work_dir / state.get("checkpoint", "none")
    if stamp.exists() and stamp.read_text() == text and "rng" in state and checkpoint.exists():
        model = keras.saving.load_model(checkpoint, safe_mode=True)
        _restore_rng_states(model, state["rng"])
        log.info("resuming from the checkpoint after epoch %d", state["epoch"] + 1)
        return model, state["history"]
    for stale in (*work_dir.glob("checkpoint*.keras"), epoch_file):
        stale.unlink(missing_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(text)
    return None


def finetune(model: keras.Model, *, train_path: str | Path, valid_path: str | Path, epochs: int, batch_size: int,
             lr: float, dropout: float | None, seed: int, shuffle_buffer: int, work_dir: str | Path | None = None,
             recipe: dict | None = None, live_dir: str | Path | None = None, compute: str = "float32",
             ) -> tuple[keras.Model, list[dict]]:
    """Train `model` (a dense part) on the train features; validate on the valid features after each epoch.

    Batches are streamed from the HDF5 files, shuffled anew each epoch from a seed derived from (seed, epoch), so
    a run resumed from its checkpoint after epoch k sees the same batches as one that never stopped.
    `recipe` identifies the run (inputs' hashes and params): a checkpoint is only resumed for the same recipe;
    without a `work_dir`, nothing is checkpointed (short runs). `dropout` None keeps the model's rates.
    Per-epoch curves go to `live_dir` through dvclive's Keras callback, replayed from the checkpoint on resume.
    `compute` 'bfloat16' trains with Keras mixed precision; the returned model computes in float32 again.
    Returns the trained model and every epoch's logs (loss, accuracy, val_loss, val_accuracy).
    """
    seed_everything(seed)
    resumed = _resume(Path(work_dir), recipe) if work_dir else None
    if resumed:
        model, history = resumed
    else:
        model = with_dropout(model, dropout) if dropout is not None else model
        model, history = models.with_compute_dtype(model, compute), []
        compile_for_training(model, lr)
    initial_epoch = len(history)
    with features.open_features(train_path) as file:
        rows, row_shape = file["features"].shape[0], file["features"].shape[1:]

    def train_batches():
        for epoch in count(initial_epoch):
            yield from features.shuffled_batches(train_path, batch_size, shuffle_buffer, seed=seed * 100_003 + epoch)

    def valid_batches():
        yield from features.iter_batches(valid_path, batch_size)

    callbacks = [_Checkpoint(Path(work_dir), history)] if work_dir else [_History(history)]
    live = live_logger(live_dir, history) if live_dir else None
    if live is not None:
        callbacks.append(live_callback(live))
    if initial_epoch < epochs:
        model.fit(_dataset(train_batches, row_shape), validation_data=_dataset(valid_batches, row_shape),
                  epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=math.ceil(rows / batch_size),
                  callbacks=callbacks, verbose=2)
    if live is not None:
        live.end()
    return models.with_compute_dtype(model, "float32"), history


def live_callback(live) -> keras.callbacks.Callback:
    from dvclive.keras import DVCLiveCallback

    return DVCLiveCallback(live=live)


def live_logger(live_dir, history: list[dict]):
    """A fresh dvclive logger in `live_dir` holding the epochs already done, as its Keras callback names them.

    It neither edits dvc.yaml nor saves experiments itself: the curves are declared as plots in dvc.yaml.
    """
    import shutil

    from dvclive import Live
    from dvclive.utils import standardize_metric_name

    shutil.rmtree(live_dir, ignore_errors=True)
    live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    for logs in history:
        for name, value in logs.items():
            live.log_metric(standardize_metric_name(name, "dvclive.keras"), value)
        live.next_step()
    return live


def finetune_files(*, model_path, train_path, valid_path, work_dir, live_dir, params) -> tuple[keras.Model, dict]:
    """The finetune stage: the trained model and the last epoch's train and valid loss and accuracy."""
    recipe = {"model": file_md5(model_path), "train": file_md5(train_path), "valid": file_md5(valid_path),
              "params": dataclasses.asdict(params)}
    model, history = finetune(models.load_model_file(model_path), train_path=train_path, valid_path=valid_path,
                              epochs=params.epochs, batch_size=params.batch_size, lr=params.lr,
                              dropout=params.dropout, seed=params.seed, shuffle_buffer=params.shuffle_buffer,
                              work_dir=work_dir, recipe=recipe, live_dir=live_dir, compute=params.compute)
    last = history[-1]
    metrics = {"train_loss": last["loss"], "train_accuracy": last["accuracy"], "valid_loss": last["val_loss"],
               "valid_accuracy": last["val_accuracy"], "epochs": len(history)}
    return model, metrics


def evaluate(model: keras.Model, path: str | Path, batch_size: int) -> dict:
    """Loss and accuracy of a compiled-or-not classifier over a feature file, streamed in file order."""
    score = Score()
    for x, y in features.iter_batches(path, batch_size):
        score.add(model.predict_on_batch(x), y)
    return score.result()
