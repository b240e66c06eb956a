"""Transfer to new classes (the 2017 notebook's `vgg_ft_bn`), with and without batch normalization, side by side.

The notebook's claim: a dense part with BN fine-tunes on a new task with "higher learning rates, more resilient
training, and less need for dropout". We check it on every run: the same new-task training, over a grid of
learning rates and seeds, once from the fine-tuned dense part with BN and once from the original dense part.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from vggbn import console
from vggbn.cluster import distribute
from vggbn.numerics import tfmemory
from vggbn.numerics.feature_training import TrainingPlan, evaluate, train_on_features
from vggbn.numerics.frozen_rows import cache_frozen_rows
from vggbn.numerics.new_task import _head_index, frozen_part, head_model, new_task_model
from vggbn.storage.tables import PlotTable


@dataclass(frozen=True)
class TransferGrid:
    """The trainings a transfer compares: `train_mode` ('head': the new softmax layer alone; 'dense': every dense
    layer), each learning rate of `lrs` with each seed of `seeds`, for `epochs` at `batch_size`; the shuffle buffer
    of each (rows: a new task's features are small, so 4096 rows shuffle most of them at once)."""
    train_mode: str
    lrs: Sequence[float]
    seeds: Sequence[int]
    epochs: int
    batch_size: int
    shuffle_buffer: int = 4096

    def __post_init__(self):
        if self.train_mode not in ("head", "dense"):
            raise ValueError(f"Expected `train_mode` to be one of head, dense. Received: train_mode={self.train_mode}")

    @classmethod
    def from_section(cls, section) -> TransferGrid:
        """The grid the `transfer` params section describes."""
        return cls(section.train, tuple(section.lrs), tuple(section.seeds), section.epochs, section.batch_size)

    def plan(self, lr: float, seed: int) -> TrainingPlan:
        """One training of the grid: no dropout change, a diverged run recorded as a result."""
        return TrainingPlan(epochs=self.epochs, batch_size=self.batch_size, lr=lr, dropout=None, seed=seed,
                            shuffle_buffer=self.shuffle_buffer, diverged="record")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # a diverged run's NaN loss has no JSON spelling


@contextlib.contextmanager
def _training_inputs(name: str, dense: keras.Model, grid: TransferGrid, *, num_classes: int, train_path, valid_path,
                     work_dir: Path):
    """(model for a seed, train path, valid path) of one start: the whole new-task model on the new task's
    features ('dense'), or the head on the frozen part's output cached in `work_dir`/frozen/<start> ('head'),
    which is removed when the start's runs are over."""
    if grid.train_mode != "head":
        yield (lambda seed: new_task_model(dense, num_classes, train_mode=grid.train_mode, seed=seed)), train_path, \
            valid_path
        return
    _head_index(dense)  # a start without a classifier fails before any work
    folder = Path(work_dir) / "frozen" / name
    distribute.remove_shared(folder)  # what a killed run left: rows of another start or model
    try:
        with tfmemory.released():
            frozen, cached = frozen_part(dense), {}
            for split, path in (("train", train_path), ("valid", valid_path)):
                cached[split] = folder / f"{split}.h5"
                cache_frozen_rows(frozen, source_path=path, out_path=cached[split], work_dir=folder / f"{split}-work",
                                  batch_size=max(grid.batch_size, 256))
            del frozen
        yield (lambda seed: head_model(dense, num_classes, seed=seed)), cached["train"], cached["valid"]
    finally:
        distribute.remove_shared(folder)


def compare_transfer(starts: dict[str, keras.Model], grid: TransferGrid, *, train_path, valid_path, num_classes: int,
                     work_dir: str | Path | None = None) -> dict:
    """Train every start model on the new task for each learning rate and seed; valid scores per learning rate.

    Returns {start name: {"per_lr": {lr: {"accuracy", "loss", "accuracy_min", "accuracy_max"}}, "best_accuracy",
    "best_lr", "spread"}}, where accuracy is the mean over seeds and spread is the best minus the worst
    learning rate's accuracy: how much the choice of learning rate matters.

    One training's model and optimizer are alive at a time, whatever the grid (`vggbn.numerics.tfmemory`). In 'head' mode
    the frozen part's output is computed once per start, cached in `work_dir` (a temporary folder if None) and
    the head alone trained on it: the same result as training the whole model with the frozen part in inference.
    """
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = distribute.shared_temporary_folder(stack)
        report = {}
        bar = console.open_progress(len(starts) * len(grid.lrs) * len(grid.seeds), "transfer runs", "run")  # one bar, all runs
        for name, dense in starts.items():
            per_lr = {}
            with _training_inputs(name, dense, grid, num_classes=num_classes, train_path=train_path,
                                  valid_path=valid_path, work_dir=Path(work_dir)) as (make_model, train, valid):
                for lr in grid.lrs:
                    runs = []
                    for seed in grid.seeds:
                        with tfmemory.released():
                            model = train_on_features(make_model(seed), grid.plan(lr, seed), train_path=train,
                                                      valid_path=valid, show_progress=False).model
                            runs.append(evaluate(model, valid, grid.batch_size))
                            del model
                        bar.update(1)
                    accuracies = [run["accuracy"] for run in runs]
                    per_lr[f"{lr:g}"] = {"accuracy": float(np.mean(accuracies)), "accuracy_min": min(accuracies),
                                         "accuracy_max": max(accuracies),
                                         "loss": _finite(float(np.mean([run["loss"] for run in runs])))}
            means = {lr: result["accuracy"] for lr, result in per_lr.items()}
            best_lr = max(means, key=means.get)
            report[name] = {"per_lr": per_lr, "best_accuracy": means[best_lr], "best_lr": float(best_lr),
                            "spread": max(means.values()) - min(means.values())}
        bar.close()
    return report


def accuracy_tables(report: dict) -> dict[str, PlotTable]:
    """Per start, the transfer plot's table: valid accuracy against the learning rate (and its log10)."""
    return {start: PlotTable(("lr", "log10_lr", "accuracy"),
                         [(float(lr), math.log10(float(lr)), result["accuracy"])
                          for lr, result in report[start]["per_lr"].items()])
            for start in ("with_bn", "without_bn")}
