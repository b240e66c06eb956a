"""Keras training helpers shared by every stage that trains: seeding, compiling, per-epoch logs, progress and
dvclive curves."""

from __future__ import annotations

import shutil

import keras
import tensorflow as tf

from vggbn import console


def seed_everything(seed: int) -> None:
    """Same params, same weights: seeded Python/numpy/TF RNGs and deterministic TF kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def compile_for_training(model: keras.Model, lr: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def floats(logs) -> dict:
    """A Keras epoch's logs as plain floats (JSON-ready)."""
    return {key: float(value) for key, value in (logs or {}).items()}


class History(keras.callbacks.Callback):
    """Appends each epoch's logs to `history`."""

    def __init__(self, history: list[dict]):
        super().__init__()
        self.history = history

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(floats(logs))


class EpochProgress(keras.callbacks.Callback):
    """A progress bar over each epoch's training steps (`console.progress`), in place of Keras' own lines, which
    `fit(verbose=console.keras_verbosity())` shows under VGGBN_LOG=debug instead."""

    bar = None

    def on_epoch_begin(self, epoch, logs=None):
        if not console.debug():
            self.bar = console.open_progress(self.params.get("steps"), f"epoch {epoch + 1}/{self.params['epochs']}",
                                             "batch")

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def live_callback(live) -> keras.callbacks.Callback:
    from dvclive.keras import DVCLiveCallback

    return DVCLiveCallback(live=live)


def live_logger(live_dir, history: list[dict]):
    """A fresh dvclive logger in `live_dir` holding the epochs already done, as its Keras callback names them.

    It neither edits dvc.yaml nor saves experiments itself: the curves are declared as plots in dvc.yaml.
    """
    from dvclive import Live
    from dvclive.utils import standardize_metric_name

    shutil.rmtree(live_dir, ignore_errors=True)
    live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    for logs in history:
        for name, value in logs.items():
            live.log_metric(standardize_metric_name(name, "dvclive.keras"), value)
        live.next_step()
    return live
