"""Transfer to new classes (the 2017 notebook's `vgg_ft_bn`), with and without batch normalization, side by side.

The notebook's claim: a dense part with BN fine-tunes on a new task with "higher learning rates, more resilient
training, and less need for dropout". We check it on every run: the same new-task training, over a grid of
learning rates and seeds, once from the fine-tuned dense part with BN and once from the original dense part.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from vggbn import console, distribute, extract, features, models
from vggbn.files import StageResult, Table, file_md5
from vggbn.finetune import evaluate, train_on_features
from vggbn.images import ImageInput
from vggbn.listing import read_listing
from vggbn.sample import build_sample


def new_task_model(dense: keras.Model, num_classes: int, *, train_mode: str, seed: int) -> keras.Model:
    """A copy of `dense` whose classifier is replaced by a new softmax layer for `num_classes` classes.

    `train_mode` 'head' freezes every earlier layer (calibrated BN then keeps using its moving statistics);
    'dense' trains them all (BN normalizes each batch while training).
    """
    if train_mode not in ("head", "dense"):
        raise ValueError(f"Expected `train_mode` to be one of head, dense. Received: train_mode={train_mode}")
    copy = models.copy_chain(dense, name=f"{dense.name}_transfer")
    last = max(i for i, layer in enumerate(copy.layers) if isinstance(layer, keras.layers.Dense))
    if train_mode == "head":
        for layer in copy.layers[:last]:
            layer.trainable = False
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(
        copy.layers[last - 1].output)
    return keras.Model(copy.input, outputs, name=f"{dense.name}_transfer")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # a diverged run's NaN loss has no JSON spelling


def compare_transfer(starts: dict[str, keras.Model], *, train_path, valid_path, num_classes: int, train_mode: str,
                     lrs: Sequence[float], seeds: Sequence[int], epochs: int, batch_size: int) -> dict:
    """Train every start model on the new task for each learning rate and seed; valid scores per learning rate.

    Returns {start name: {"per_lr": {lr: {"accuracy", "loss", "accuracy_min", "accuracy_max"}}, "best_accuracy",
    "best_lr", "spread"}}, where accuracy is the mean over seeds and spread is the best minus the worst
    learning rate's accuracy: how much the choice of learning rate matters.
    """
    report = {}
    grid = console.open_progress(len(starts) * len(lrs) * len(seeds), "transfer runs", "run")  # one bar, all runs
    for name, dense in starts.items():
        per_lr = {}
        for lr in lrs:
            runs = []
            for seed in seeds:
                model = new_task_model(dense, num_classes, train_mode=train_mode, seed=seed)
                model = train_on_features(model, train_path=train_path, valid_path=valid_path, epochs=epochs,
                                          batch_size=batch_size, lr=lr, dropout=None, seed=seed,
                                          shuffle_buffer=4096, diverged="record", show_progress=False).model
                runs.append(evaluate(model, valid_path, batch_size))
                grid.update(1)
            accuracies = [run["accuracy"] for run in runs]
            per_lr[f"{lr:g}"] = {"accuracy": float(np.mean(accuracies)), "accuracy_min": min(accuracies),
                                 "accuracy_max": max(accuracies),
                                 "loss": _finite(float(np.mean([run["loss"] for run in runs])))}
        means = {lr: result["accuracy"] for lr, result in per_lr.items()}
        best_lr = max(means, key=means.get)
        report[name] = {"per_lr": per_lr, "best_accuracy": means[best_lr], "best_lr": float(best_lr),
                        "spread": max(means.values()) - min(means.values())}
    grid.close()
    return report


def transfer_features(*, conv: keras.Model, model_md5: str, listing: str | Path, inputs: ImageInput,
                      out_paths: dict[str, str], work_dir: str | Path) -> tuple[list[str], int]:
    """Conv features of every usable image of the new task's folder (`inputs.root`), through the conv_features
    code path (rows of the previous run reused, after their check). Returns the new task's class names (sorted
    folder names) in index order, and the rows made again because their reused or resumed bytes failed a check.
    """
    sample = build_sample(entries=read_listing(listing), root=inputs.root)
    recomputed_corrupt = 0
    for split, rows in (("train", sample.train), ("valid", sample.valid)):
        stats = extract.extract_split(conv=conv, model_md5=model_md5, inputs=inputs, paths=[r.path for r in rows],
                                      labels=[r.label for r in rows], md5s=[r.md5 for r in rows],
                                      out_path=out_paths[split], work_dir=Path(work_dir) / split)
        recomputed_corrupt += stats["recomputed_corrupt"]
    return sample.classes, recomputed_corrupt


def accuracy_tables(report: dict) -> dict[str, Table]:
    """Per start, the transfer plot's table: valid accuracy against the learning rate (and its log10)."""
    return {start: Table(("lr", "log10_lr", "accuracy"),
                         [(float(lr), math.log10(float(lr)), result["accuracy"])
                          for lr, result in report[start]["per_lr"].items()])
            for start in ("with_bn", "without_bn")}


def run_transfer(*, pretrained_path, finetuned_path, cut_from, listing, inputs: ImageInput,
                 out_paths: dict[str, str], work_dir, params) -> StageResult:
    """The transfer stage (`params`: TransferParams; `inputs.root` is the new task's folder): new-task features,
    then the with/without-BN comparison; plot `transfer`: accuracy against learning rate per start."""
    conv, original_dense = models.split(models.load_model_file(pretrained_path), features.feature_cut(cut_from))
    classes, recomputed_corrupt = transfer_features(conv=conv, model_md5=file_md5(pretrained_path), listing=listing,
                                                    inputs=inputs, out_paths=out_paths, work_dir=work_dir)
    starts = {"with_bn": models.load_model_file(finetuned_path), "without_bn": original_dense}
    report = compare_transfer(starts, train_path=out_paths["train"], valid_path=out_paths["valid"],
                              num_classes=len(classes), train_mode=params.train, lrs=params.lrs,
                              seeds=params.seeds, epochs=params.epochs, batch_size=params.batch_size)
    report["classes"] = classes
    report["train_mode"] = params.train
    report["features_recomputed_corrupt"] = recomputed_corrupt
    report.update(distribute.describe())
    return StageResult(report, {"transfer": accuracy_tables(report)})
