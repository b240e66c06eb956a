"""Transfer to new classes (the 2017 notebook's `vgg_ft_bn`), with and without batch normalization, side by side.

The notebook's claim: a dense part with BN fine-tunes on a new task with "higher learning rates, more resilient
training, and less need for dropout". We check it on every run: the same new-task training, over a grid of
learning rates and seeds, once from the fine-tuned dense part with BN and once from the original dense part.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from vggbn import console
from vggbn.numerics import extract, models, tfmemory
from vggbn.cluster import distribute
from vggbn.storage import features
from vggbn.storage.tables import PlotTable
from vggbn.numerics.feature_training import evaluate, TrainingPlan, train_on_features
from vggbn.numerics.images import ImageInput
from vggbn.storage.listing import read_listing
from vggbn.storage.sampling import build_sample


def _head_index(dense: keras.Model) -> int:
    """Index in `dense.layers` of the classifier the new head replaces: the last Dense layer."""
    dense_layers = [i for i, layer in enumerate(dense.layers) if isinstance(layer, keras.layers.Dense)]
    if not dense_layers:
        raise ValueError(f"the start model {dense.name!r} has no Dense layer to replace with a new softmax layer")
    return dense_layers[-1]


def _cached_end(dense: keras.Model) -> int:
    """Index of the frozen part's last layer whose output is cached in head mode: the last layer before the head
    that is not a Dropout layer (the Dropout layers right before the head still act on the cached rows)."""
    end = _head_index(dense) - 1
    while end > 0 and isinstance(dense.layers[end], keras.layers.Dropout):
        end -= 1
    return end


def _new_head(num_classes: int, seed: int) -> keras.layers.Dense:
    return keras.layers.Dense(num_classes, activation="softmax", name="predictions",
                              kernel_initializer=keras.initializers.GlorotUniform(seed=seed))


def new_task_model(dense: keras.Model, num_classes: int, *, train_mode: str, seed: int) -> keras.Model:
    """A copy of `dense` whose classifier is replaced by a new softmax layer for `num_classes` classes.

    `train_mode` 'head' freezes every earlier layer, and the frozen part acts as in inference while the head
    trains: calibrated BN keeps using its moving statistics (Keras does so for a frozen BN layer) and the Dropout
    layers inside it are off (rate 0); only the Dropout layers right before the new head still drop, on the
    frozen part's output. 'dense' trains every layer (BN normalizes each batch while training, every Dropout
    layer drops). In head mode `compare_transfer` trains the same thing more cheaply (`head_model` on rows
    cached once through `frozen_part`).
    """
    if train_mode not in ("head", "dense"):
        raise ValueError(f"Expected `train_mode` to be one of head, dense. Received: train_mode={train_mode}")
    last, cached_end = _head_index(dense), _cached_end(dense)
    inner_dropouts = {layer.name for layer in dense.layers[:cached_end]
                      if isinstance(layer, keras.layers.Dropout)} if train_mode == "head" else set()

    def inference_dropout(layer, config):
        return {**config, "rate": 0.0} if layer.name in inner_dropouts else config

    copy = models.copy_chain(dense, name=f"{dense.name}_transfer", configure=inference_dropout)
    if train_mode == "head":
        for layer in copy.layers[:last]:
            layer.trainable = False
    outputs = _new_head(num_classes, seed)(copy.layers[last - 1].output)
    return keras.Model(copy.input, outputs, name=f"{dense.name}_transfer")


def frozen_part(dense: keras.Model) -> keras.Model:
    """The layers of `dense` whose output head mode caches, applied anew to an input of their own (sharing `dense`'s
    weights; the layers may also belong to a bigger model, as `models.split`'s do); run it in inference."""
    inputs = keras.Input(dense.input_shape[1:], name=dense.layers[0].name)
    x = inputs
    for layer in dense.layers[1:_cached_end(dense) + 1]:
        x = layer(x)
    return keras.Model(inputs, x, name=f"{dense.name}_frozen")


def head_model(dense: keras.Model, num_classes: int, *, seed: int) -> keras.Model:
    """What head mode trains on `frozen_part(dense)`'s cached rows: the Dropout layers right before the head (same
    config and seed as in `new_task_model`, so the same masks) and the new softmax layer."""
    cached_end, last = _cached_end(dense), _head_index(dense)
    shape = tuple(dense.input_shape)
    for layer in dense.layers[1:cached_end + 1]:
        shape = tuple(layer.compute_output_shape(shape))
    inputs = keras.Input(shape[1:], name="frozen_features")
    x = inputs
    for layer in dense.layers[cached_end + 1:last]:
        x = layer.__class__.from_config(layer.get_config())(x)
    return keras.Model(inputs, _new_head(num_classes, seed)(x), name=f"{dense.name}_head")


def cache_frozen_rows(frozen: keras.Model, *, source_path: str | Path, out_path: str | Path, work_dir: str | Path,
                      batch_size: int) -> None:
    """`frozen` (in inference) applied to every row of the feature file `source_path`, streamed a batch at a time
    into the feature file `out_path` (written atomically, as every feature file), with the source's labels,
    paths and HDF5 chunk rows: `features.shuffled_batches` then visits the same rows in the same order in both."""
    source_path = Path(source_path)
    predict = models.predictor(frozen)
    with features.open_features(source_path) as file:
        data = file["features"]
        chunk_rows = (data.chunks or (1,))[0]
        labels = file["labels"][:].tolist()

        rows = features.FeatureRows(file["paths"].asstr()[:].tolist(), labels, file["md5"].asstr()[:].tolist(),
                                    file["flipped"][:].tolist())

        def extract(indices):
            for start in range(0, len(indices), batch_size):  # ascending rows, read in contiguous runs
                wanted = indices[start:start + batch_size]
                runs, first = [], 0
                for k in range(1, len(wanted) + 1):
                    if k == len(wanted) or wanted[k] != wanted[k - 1] + 1:
                        runs.append(features.read_rows(source_path, data, wanted[first], wanted[k - 1] + 1))
                        first = k
                yield predict(np.concatenate(runs))

        def build(extract_rows):  # on the chief alone: it reads and writes the files, the others compute
            recipe = features.FeatureRecipe(
                inputs={"frozen": frozen.name, "source": str(source_path)}, row_shape=frozen.output_shape[1:],
                chunk_rows=chunk_rows, work={"replicas": distribute.replicas()})
            return features.build_feature_file(out_path, rows, recipe, extract_rows, work_dir)

        distribute.led_by_chief(build, extract)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # a diverged run's NaN loss has no JSON spelling


@contextlib.contextmanager
def _training_inputs(name: str, dense: keras.Model, *, train_mode: str, num_classes: int, train_path, valid_path,
                     work_dir: Path, batch_size: int):
    """(model for a seed, train path, valid path) of one start: the whole new-task model on the new task's
    features ('dense'), or the head on the frozen part's output cached in `work_dir`/frozen/<start> ('head'),
    which is removed when the start's runs are over."""
    if train_mode != "head":
        yield (lambda seed: new_task_model(dense, num_classes, train_mode=train_mode, seed=seed)), train_path, \
            valid_path
        return
    _head_index(dense)  # a start without a classifier fails before any work
    folder = Path(work_dir) / "frozen" / name
    _remove_shared(folder)  # what a killed run left: rows of another start or model
    try:
        with tfmemory.released():
            frozen, cached = frozen_part(dense), {}
            for split, path in (("train", train_path), ("valid", valid_path)):
                cached[split] = folder / f"{split}.h5"
                cache_frozen_rows(frozen, source_path=path, out_path=cached[split], work_dir=folder / f"{split}-work",
                                  batch_size=max(batch_size, 256))
            del frozen
        yield (lambda seed: head_model(dense, num_classes, seed=seed)), cached["train"], cached["valid"]
    finally:
        _remove_shared(folder)


def _remove_shared(folder: Path) -> None:
    """Remove a work folder that every worker may read (a shared filesystem): the chief alone removes it, once every
    worker has arrived here (done reading it), and none goes on before it is gone."""
    distribute.barrier()
    distribute.chief_only(shutil.rmtree)(folder, ignore_errors=True)
    distribute.barrier()


def _shared_temporary_folder(stack: contextlib.ExitStack) -> str:
    """A temporary work folder, the chief's on every worker (it writes the frozen rows there, every worker reads
    them: with workers on several machines, pass a `work_dir` on a filesystem they share instead)."""
    folder = distribute.chief_only(
        lambda: stack.enter_context(tempfile.TemporaryDirectory(prefix="vggbn-transfer-")))()
    stack.callback(distribute.barrier)  # on exit, first (last in, first out): removed once every worker is done
    return distribute.broadcast_json(folder)


def compare_transfer(starts: dict[str, keras.Model], *, train_path, valid_path, num_classes: int, train_mode: str,
                     lrs: Sequence[float], seeds: Sequence[int], epochs: int, batch_size: int,
                     work_dir: str | Path | None = None) -> dict:
    """Train every start model on the new task for each learning rate and seed; valid scores per learning rate.

    Returns {start name: {"per_lr": {lr: {"accuracy", "loss", "accuracy_min", "accuracy_max"}}, "best_accuracy",
    "best_lr", "spread"}}, where accuracy is the mean over seeds and spread is the best minus the worst
    learning rate's accuracy: how much the choice of learning rate matters.

    One training's model and optimizer are alive at a time, whatever the grid (`vggbn.numerics.tfmemory`). In 'head' mode
    the frozen part's output is computed once per start, cached in `work_dir` (a temporary folder if None) and
    the head alone trained on it: the same result as training the whole model with the frozen part in inference.
    """
    if train_mode not in ("head", "dense"):
        raise ValueError(f"Expected `train_mode` to be one of head, dense. Received: train_mode={train_mode}")
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = _shared_temporary_folder(stack)
        report = {}
        grid = console.open_progress(len(starts) * len(lrs) * len(seeds), "transfer runs", "run")  # one bar, all runs
        for name, dense in starts.items():
            per_lr = {}
            with _training_inputs(name, dense, train_mode=train_mode, num_classes=num_classes, train_path=train_path,
                                  valid_path=valid_path, work_dir=Path(work_dir), batch_size=batch_size) as (
                    make_model, train, valid):
                for lr in lrs:
                    runs = []
                    for seed in seeds:
                        with tfmemory.released():
                            model = train_on_features(make_model(seed), TrainingPlan(epochs=epochs,
                                                      batch_size=batch_size, lr=lr, dropout=None, seed=seed,
                                                      shuffle_buffer=4096), train_path=train, valid_path=valid,
                                                      diverged="record", show_progress=False).model
                            runs.append(evaluate(model, valid, batch_size))
                            del model
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
        manifest = features.FeatureRows.of([r.path for r in rows], [r.label for r in rows], [r.md5 for r in rows])
        stats = extract.extract_split(conv, inputs, manifest, extract.Extraction(model_md5), out_paths[split],
                                      Path(work_dir) / split)
        recomputed_corrupt += stats["recomputed_corrupt"]
    return sample.classes, recomputed_corrupt


def accuracy_tables(report: dict) -> dict[str, PlotTable]:
    """Per start, the transfer plot's table: valid accuracy against the learning rate (and its log10)."""
    return {start: PlotTable(("lr", "log10_lr", "accuracy"),
                         [(float(lr), math.log10(float(lr)), result["accuracy"])
                          for lr, result in report[start]["per_lr"].items()])
            for start in ("with_bn", "without_bn")}
