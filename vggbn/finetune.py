"""Train a dense part on cached features streamed from HDF5, resumable from per-epoch checkpoints; the finetune stage."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from itertools import count
from pathlib import Path

import keras
import tensorflow as tf

from vggbn import console, features, models
from vggbn.atomic import atomic_path
from vggbn.files import StageResult, file_md5, prepare_work, write_json
from vggbn.scoring import Score
from vggbn.tfdata import without_autotune
from vggbn.training import (EpochProgress, History, compile_for_training, floats, live_callback, live_logger,
                            seed_everything)

log = logging.getLogger(__name__)


def with_dropout(model: keras.Model, rate: float) -> keras.Model:
    """A copy of `model` whose Dropout layers drop `rate` of their inputs while training."""
    def set_rate(layer, config):
        return {**config, "rate": rate} if isinstance(layer, keras.layers.Dropout) else config
    return models.copy_chain(model, name=model.name, configure=set_rate)


def _dataset(generator, row_shape, batches: int) -> tf.data.Dataset:
    """The generator's batches, declared to be `batches` many (tf.data.INFINITE_CARDINALITY: endless), so Keras
    neither has to run out of data to learn where an epoch ends nor warns that it did."""
    signature = (tf.TensorSpec((None, *row_shape), tf.float32), tf.TensorSpec((None,), tf.int32))
    dataset = tf.data.Dataset.from_generator(generator, output_signature=signature)
    return without_autotune(dataset.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(2))


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
        self.history.append(floats(logs))
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


CHECKPOINT_FILES = ("checkpoint*.keras", "epoch.json")


def _resume(work_dir: Path, recipe: dict):
    """(model, per-epoch logs so far) from an interrupted run of the same recipe, else None."""
    if not prepare_work(work_dir, recipe, stale=CHECKPOINT_FILES):
        return None
    epoch_file = work_dir / "epoch.json"
    state = json.loads(epoch_file.read_text()) if epoch_file.exists() else {}
    checkpoint = work_dir / state.get("checkpoint", "none")
    if "rng" not in state or not checkpoint.exists():
        return None
    model = keras.saving.load_model(checkpoint, safe_mode=True)
    _restore_rng_states(model, state["rng"])
    log.info("resuming from the checkpoint after epoch %d", state["epoch"] + 1)
    return model, state["history"]


def train_on_features(model: keras.Model, *, train_path: str | Path, valid_path: str | Path, epochs: int,
                      batch_size: int, lr: float, dropout: float | None, seed: int, shuffle_buffer: int,
                      work_dir: str | Path | None = None, recipe: dict | None = None,
                      live_dir: str | Path | None = None, compute: str = "float32",
                      show_progress: bool = True) -> tuple[keras.Model, list[dict]]:
    """Train `model` (a dense part) on the train features; validate on the valid features after each epoch.

    Batches are streamed from the HDF5 files, shuffled anew each epoch from a seed derived from (seed, epoch), so
    a run resumed from its checkpoint after epoch k sees the same batches as one that never stopped.
    `recipe` identifies the run (inputs' hashes and params): a checkpoint is only resumed for the same recipe;
    without a `work_dir`, nothing is checkpointed (short runs). `dropout` None keeps the model's rates.
    Per-epoch curves go to `live_dir` through dvclive's Keras callback, replayed from the checkpoint on resume.
    `compute` 'bfloat16' trains with Keras mixed precision; the returned model computes in float32 again.
    `show_progress` False: no bar per epoch (a caller showing its own, over many trainings).
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
    with features.open_features(valid_path) as file:
        valid_batches_count = math.ceil(file["features"].shape[0] / batch_size)

    def train_batches():
        for epoch in count(initial_epoch):
            yield from features.shuffled_batches(train_path, batch_size, shuffle_buffer, seed=seed * 100_003 + epoch)

    def valid_batches():
        yield from features.iter_batches(valid_path, batch_size)

    callbacks = [_Checkpoint(Path(work_dir), history)] if work_dir else [History(history)]
    live = live_logger(live_dir, history) if live_dir else None
    if live is not None:
        callbacks.append(live_callback(live))
    if show_progress:
        callbacks.append(EpochProgress())
    if initial_epoch < epochs:  # batches are shuffled by train_batches (shuffle=False: fit cannot shuffle them)
        model.fit(_dataset(train_batches, row_shape, tf.data.INFINITE_CARDINALITY),
                  validation_data=_dataset(valid_batches, row_shape, valid_batches_count), epochs=epochs,
                  initial_epoch=initial_epoch, steps_per_epoch=math.ceil(rows / batch_size), shuffle=False,
                  callbacks=callbacks, verbose=console.keras_verbosity())
    if live is not None:
        live.end()
    return models.with_compute_dtype(model, "float32"), history


def evaluate(model: keras.Model, path: str | Path, batch_size: int) -> dict:
    """Loss and accuracy of a compiled-or-not classifier over a feature file, streamed in file order."""
    score, predict = Score(), models.predictor(model)
    for x, y in features.iter_batches(path, batch_size):
        score.add(predict(x), y)
    return score.result()


def run_finetune(*, model_path, train_path, valid_path, out_path, work_dir, live_dir, params) -> StageResult:
    """The finetune stage (`params`: FinetuneParams): the trained dense part saved to `out_path`; the last
    epoch's train and valid loss and accuracy."""
    recipe = {"model": file_md5(model_path), "train": file_md5(train_path), "valid": file_md5(valid_path),
              "params": dataclasses.asdict(params)}
    model, history = train_on_features(
        models.load_model_file(model_path), train_path=train_path, valid_path=valid_path, epochs=params.epochs,
        batch_size=params.batch_size, lr=params.lr, dropout=params.dropout, seed=params.seed,
        shuffle_buffer=params.shuffle_buffer, work_dir=work_dir, recipe=recipe, live_dir=live_dir,
        compute=params.compute)
    models.save_model(model, out_path)
    last = history[-1]
    return StageResult({"train_loss": last["loss"], "train_accuracy": last["accuracy"],
                        "valid_loss": last["val_loss"], "valid_accuracy": last["val_accuracy"],
                        "epochs": len(history)})
