"""Train a dense part on cached features streamed from HDF5, resumable from per-epoch checkpoints: what the finetune
stage and the transfer stage's trainings run."""

from __future__ import annotations

import json
import logging
import math
import os
import itertools
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import keras
import tensorflow as tf

from vggbn import VggbnError
from vggbn.numerics import models
from vggbn.cluster import distribute
from vggbn.storage import feed, features
from vggbn.storage.atomic import atomic_path, staging_folder
from vggbn.storage.hashing import bytes_digest, file_digest
from vggbn.storage.workdir import prepare_work
from vggbn.storage.tables import write_json
from vggbn.numerics.scoring import Score
from vggbn.numerics.tfdata import without_autotune
from vggbn.numerics.training import (EpochHooks, Trainer, compile_for_training, for_training, live_logger,
                                     seed_everything, train_epochs)

log = logging.getLogger(__name__)


def with_dropout(model: keras.Model, rate: float) -> keras.Model:
    """A copy of `model` whose Dropout layers drop `rate` of their inputs while training."""
    def set_rate(layer, config):
        return {**config, "rate": rate} if isinstance(layer, keras.layers.Dropout) else config
    return models.copy_chain(model, name=model.name, configure=set_rate)


class TrainingDiverged(VggbnError):
    pass


def _check_finite(logs: dict, lr: float, where: str) -> None:
    """A non-finite loss (or metric) stops training before the epoch is checkpointed, with one line naming the epoch
    (and batch): a diverged model is no result to save or to resume from."""
    bad = {key: float(value) for key, value in logs.items() if not math.isfinite(float(value))}
    if bad:
        shown = ", ".join(f"{key} {value}" for key, value in bad.items())
        raise TrainingDiverged(f"{where}: training diverged ({shown}); a lower learning rate than {lr:g} may hold")


@distribute.chief_only
def _save_checkpoint(model: keras.Model, work_dir: Path, epoch: int, history: list[dict]) -> None:
    """Model and optimizer after `epoch`, atomically, with the epoch's record beside it.

    `epoch.json` names the checkpoint file of its epoch with the digest of its bytes, holds the dropout RNG states,
    which `model.save` does not keep, and a digest of itself: a kill between writing the two files leaves the
    previous epoch's pair, a resumed run draws the same dropout masks as one that never stopped, and a damaged
    checkpoint or record is never resumed from.
    """
    name = f"checkpoint-{epoch:04d}.keras"
    path = work_dir / name
    with atomic_path(path, needed=models.variable_bytes(model, optimizer=True)) as tmp, \
            staging_folder(path) as staging:  # Keras may put a temporary file beside the one it writes
        model.save(staging / name)
        os.replace(staging / name, tmp)
    state = {"epoch": epoch, "checkpoint": name, "checkpoint_digest": file_digest(path),
             "rng": _rng_states(model), "history": history}
    write_json(work_dir / "epoch.json", {**state, "digest": _state_digest(state)})
    for old in work_dir.glob("checkpoint*.keras"):
        if old.name != name:
            old.unlink()


def _state_digest(state: dict) -> str:
    return bytes_digest(json.dumps(state, sort_keys=True).encode())


def _seed_states(model: keras.Model) -> dict[str, list]:
    """layer name -> the state variables of the layer's seed generators (Dropout's masks come from them): what
    Keras documents `layer.variables` to hold beyond `layer.weights`, in its order."""
    def states(layer):
        weights = {id(weight) for weight in layer.weights}
        return [variable for variable in layer.variables if id(variable) not in weights]
    return {layer.name: states(layer) for layer in model.layers}


def _rng_states(model: keras.Model) -> dict[str, list]:
    return {name: [state.numpy().tolist() for state in states]
            for name, states in _seed_states(model).items() if states}


def _restore_rng_states(model: keras.Model, states: dict[str, list]) -> None:
    for name, variables in _seed_states(model).items():
        for variable, state in zip(variables, states.get(name, []), strict=True):
            variable.assign(state)


CHECKPOINT_FILES = ("checkpoint*.keras", "epoch.json")


class _Resumed(NamedTuple):
    model: keras.Model
    history: list[dict]


def _resume(work_dir: Path, recipe: dict) -> tuple[_Resumed | None, int]:
    """(model and per-epoch logs so far, from an interrupted run of the same recipe, or None; epochs lost because
    the checkpoint or its record failed its check, which are then trained again from the start)."""
    # the replica count changes the weights' last bits (sums in another order): a checkpoint of another is not resumed
    if not prepare_work(work_dir, {"recipe": recipe, "replicas": distribute.replicas()}, stale=CHECKPOINT_FILES):
        return None, 0
    epoch_file = work_dir / "epoch.json"
    checkpoints = sorted(work_dir.glob("checkpoint-*.keras"))
    if not epoch_file.exists():
        return None, 0
    state: dict = {}
    try:
        record = json.loads(epoch_file.read_bytes())
        state = {key: value for key, value in record.items() if key != "digest"}
        if record.get("digest") != _state_digest(state):
            raise ValueError("its digest does not match its content")
        checkpoint = work_dir / state["checkpoint"]
        if file_digest(checkpoint) != state["checkpoint_digest"]:
            raise ValueError(f"{checkpoint.name} does not have the digest it records")
        model = keras.saving.load_model(checkpoint, safe_mode=True)
        _restore_rng_states(model, state["rng"])
    except Exception as error:  # noqa: BLE001 - whatever is wrong with it, the checkpoint is not resumed from
        lost = _epochs_done(state, checkpoints)
        log.warning("%s: the checkpoint of an interrupted run fails its check (%s): dropped; %d epochs trained "
                    "again", epoch_file, str(error).splitlines()[0] if str(error) else type(error).__name__, lost)
        for path in [epoch_file, *checkpoints]:
            path.unlink(missing_ok=True)
        return None, lost
    log.info("resuming from the checkpoint after epoch %d", state["epoch"] + 1)
    return _Resumed(model, state["history"]), 0


def _epochs_done(state: dict, checkpoints: list[Path]) -> int:
    """Epochs an interrupted run had completed, by its record if readable, else by its checkpoint's name."""
    if isinstance(state.get("history"), list):
        return len(state["history"])
    numbers = [int(p.stem.split("-")[1]) for p in checkpoints if p.stem.split("-")[1].isdigit()]
    return max(numbers) + 1 if numbers else 0


class Trained(NamedTuple):
    model: keras.Model
    history: list[dict]  # every epoch's logs (loss, accuracy, val_loss, val_accuracy)
    epochs_recomputed_corrupt: int  # epochs trained again because their checkpoint failed its check


@dataclass(frozen=True)
class TrainingPlan:
    """How to train on features: the finetune stage's params section (`finetune.*`), or a transfer run's."""
    epochs: int
    batch_size: int
    lr: float
    dropout: float | None  # None keeps the model's rates
    seed: int
    shuffle_buffer: int  # rows held for shuffling while streaming from HDF5
    compute: str = "float32"  # "bfloat16", "float16": Keras mixed precision (float16 with loss scaling)
    diverged: str = "raise"  # a non-finite loss: a `TrainingDiverged` error ("raise"), or a result ("record")

    def __post_init__(self):
        if self.diverged not in ("raise", "record"):
            raise ValueError(f"Expected `diverged` to be one of raise, record. Received: diverged={self.diverged}")

    @classmethod
    def from_section(cls, section) -> "TrainingPlan":
        """The plan a params section (a dataclass) describes: its fields of the same names; a key the plan does not
        use (a note, a key for another step) is no error."""
        return cls(**{field.name: getattr(section, field.name) for field in dataclasses.fields(cls)
                      if hasattr(section, field.name)})


class Checkpoints(NamedTuple):
    """Where a training checkpoints after each epoch, and the recipe (inputs' hashes and params) a checkpoint there
    is resumed for."""
    work_dir: str | Path
    recipe: dict


def train_on_features(model: keras.Model, plan: TrainingPlan, *, train_path: str | Path, valid_path: str | Path,
                      checkpoints: Checkpoints | None = None, live_dir: str | Path | None = None,
                      show_progress: bool = True) -> Trained:
    """Train `model` (a dense part) on the train features; validate on the valid features after each epoch.

    Batches are streamed from the HDF5 files, shuffled anew each epoch from a seed derived from (seed, epoch), so
    a run resumed from its checkpoint after epoch k sees the same batches as one that never stopped.
    `checkpoints.recipe` identifies the run (inputs' hashes and params): a checkpoint is only resumed for the same
    recipe, and only if it and its record pass their digests (else training starts over, with a warning);
    without `checkpoints`, nothing is checkpointed (short runs).
    Per-epoch curves go to `live_dir` through dvclive's Keras callback (`training.log_epoch`), replayed from the
    checkpoint on resume.
    `plan.compute` 'bfloat16' or 'float16' trains with Keras mixed precision (float16 with dynamic loss scaling);
    the returned model computes in float32 again.
    `plan.diverged` 'raise': a non-finite loss is a `TrainingDiverged` error naming the epoch; 'record': training
    goes on, and the logs show it (a learning-rate sweep records a diverged run as a result).
    `show_progress` False: no bar per epoch (a caller showing its own, over many trainings).
    """
    seed_everything(plan.seed)
    strategy = distribute.strategy()
    model, history, lost, trainer = _start(model, strategy, plan, checkpoints)
    with features.open_features(train_path) as file:
        rows = file["features"].shape[0]
    live = live_logger(live_dir, history) if live_dir else None
    # features.shuffled_order, read straight into tensors ready for a step (storage.feed), a buffer ahead,
    # as the file stores them: float16 features go to the step's device at half the bytes, which casts them there;
    # each worker reads only its rows of each global batch, of the train and of the valid features
    train_feed = feed.Feed(train_path, plan.batch_size, plan.shuffle_buffer, worker=distribute.worker(), dtype=None,
                           tensors=True)
    train_epochs(
        trainer, epochs=plan.epochs, history=history, steps=math.ceil(rows / plan.batch_size),
        train_batches=lambda epoch: train_feed.shares(plan.seed * 100_003 + epoch),
        valid_batches=lambda: _prefetched(features.iter_shares(valid_path, plan.batch_size, distribute.my_share)),
        hooks=EpochHooks(
            check=(lambda logs, where: _check_finite(logs, plan.lr, where)) if plan.diverged == "raise" else None,
            after_epoch=(lambda epoch: _save_checkpoint(model, Path(checkpoints.work_dir), epoch, history))
            if checkpoints else None,
            live=live, show_progress=show_progress and distribute.is_chief()))
    if live is not None:
        live.end()
    return Trained(models.with_compute_dtype(trainer.finish(), "float32"), history, lost)


def _start(model: keras.Model, strategy, plan: TrainingPlan, checkpoints: Checkpoints | None):
    """(the model to train, compiled; the epochs already done; the epochs lost to a damaged checkpoint; its Trainer):
    from the checkpoint of an interrupted run of the same recipe, else fresh.

    Only the chief reads the checkpoint (outside the strategy's scope: under a multi-worker strategy every worker
    must create the same variables in the same order), and broadcasts its state: every worker builds the fresh model,
    the chief copies the checkpoint's values in, and every worker takes the chief's. Under any strategy of several
    replicas (`mirrored` too) the model trained is the fresh one built in the scope, its variables mirrored, with the
    checkpoint's values: the checkpoint's own model, loaded outside the scope, has plain variables.
    """
    resumed, lost = _resume(Path(checkpoints.work_dir), checkpoints.recipe) if checkpoints and distribute.is_chief() \
        else (None, 0)
    state = distribute.broadcast_json({"history": resumed.history if resumed else [], "lost": lost,
                                       "rng": _rng_states(resumed.model) if resumed else {}})
    with strategy.scope():
        if resumed and distribute.replicas() == 1:
            model = resumed.model
        else:
            if plan.dropout is not None:
                model = with_dropout(model, plan.dropout)
            elif distribute.replicas() > 1 and not _in_scope(model, strategy):
                model = models.copy_chain(model, name=model.name)  # its variables mirrored on every replica
            # Dense kernels stored transposed, in pieces at small batches
            model = for_training(models.with_compute_dtype(model, plan.compute), plan.batch_size)
            compile_for_training(model, plan.lr)
        trainer = Trainer(model, strategy, distribute.worker())
    if distribute.replicas() > 1 and state["history"]:
        variables = model.variables + model.optimizer.variables
        if resumed:
            for variable, value in zip(variables, resumed.model.variables + resumed.model.optimizer.variables,
                                       strict=True):
                variable.assign(value)
        distribute.sync_variables(variables)
        _restore_rng_states(model, state["rng"])
    return model, state["history"], state["lost"], trainer


def _in_scope(model: keras.Model, strategy) -> bool:
    return all(strategy.extended.variable_created_in_scope(getattr(v, "value", v)) for v in model.variables)


def _prefetched(batches) -> Iterator:
    """The (x, y) or (x, y, count) batches, read ahead by a tf.data pipeline (two batches), so HDF5 reads overlap
    the steps."""
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        return iter(())
    x = first[0]
    signature = (tf.TensorSpec((None, *x.shape[1:]), tf.float32), tf.TensorSpec((None,), tf.int32),
                 tf.TensorSpec((), tf.int64))[:len(first)]
    dataset = tf.data.Dataset.from_generator(lambda: itertools.chain([first], iterator), output_signature=signature)
    return iter(without_autotune(dataset.prefetch(2)))


def evaluate(model: keras.Model, path: str | Path, batch_size: int) -> dict:
    """Loss and accuracy of a compiled-or-not classifier over a feature file, streamed in file order."""
    score, predict = Score(), models.predictor(model)
    for x, y in features.iter_batches(path, batch_size):
        score.add(predict(x), y)
    return score.result()
