"""The public Python API: give your own Keras classifier calibrated batch normalization, and export a model for
serving. Re-exported as `vggbn.<name>`; importing `vggbn` alone does not import TensorFlow.

    import vggbn
    result = vggbn.insert_calibrated_bn(model, dataset)   # tf.data.Dataset of the model's inputs (or (x, y) pairs)
    result.max_abs_diff                                   # largest output change over `dataset`: about 1e-7
    result.model.save("model_bn.keras")
    result.statistics.save("bn_stats.h5")                 # reuse: insert_calibrated_bn(model, statistics=...)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import numpy as np

from vggbn import VggbnError
from vggbn.numerics.moments import Moments

if TYPE_CHECKING:
    import keras

LAYER_CHOICES = ("dense", "conv", "all")
POSITIONS = ("after_activation", "before_activation")
DEFAULT_BATCH = 64  # rows a batch when the data is one array


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Expected `{name}` to be one of {', '.join(allowed)}. Received: {name}={value!r}")


class BnStatistics:
    """Per layer, the float64 count, mean and variance of every unit (channel, for conv maps) that gets BN, and
    where they were measured (`position`). Save it, load it, merge the statistics of other data (another shard,
    more images) into it, and insert BN from it without measuring again."""

    def __init__(self, moments: Mapping[str, Moments], position: str = "after_activation"):
        _check_choice("position", position, POSITIONS)
        self.moments: dict[str, Moments] = dict(moments)
        self.position = position

    @property
    def layers(self) -> list[str]:
        """The measured layers, in model order."""
        return list(self.moments)

    def mean(self, layer: str) -> np.ndarray:
        return self.moments[layer].mean

    def variance(self, layer: str) -> np.ndarray:
        return self.moments[layer].variance

    def count(self, layer: str) -> int:
        """Values each unit's statistics pool (rows, times height and width for conv maps)."""
        return self.moments[layer].count

    def merge(self, other: "BnStatistics") -> "BnStatistics":
        """New statistics over both data sets (Chan's merge): exactly those of measuring them together."""
        if other.layers != self.layers or other.position != self.position:
            raise ValueError(f"cannot merge statistics of layers {other.layers} ({other.position}) into statistics "
                             f"of layers {self.layers} ({self.position})")
        merged = {}
        for name, mine in self.moments.items():
            both = Moments(mine.width)
            merged[name] = both.merge(mine).merge(other.moments[name])
        return BnStatistics(merged, self.position)

    def save(self, path: str | os.PathLike) -> None:
        """One HDF5 file (the pipeline's `data/bn_stats.h5` format), written atomically."""
        from vggbn.storage.statistics import save_statistics

        save_statistics(path, self.moments, {"position": self.position})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BnStatistics":
        """Statistics saved by `save` (or the pipeline's bn_stats stage)."""
        from vggbn.storage.statistics import load_statistics, row_counts

        stats, attrs = load_statistics(path)
        moments = {}
        for (name, (mean, variance)), count in zip(stats.items(), row_counts(path).values()):
            moments[name] = Moments(len(mean))
            moments[name].count, moments[name].mean, moments[name].m2 = count, mean, variance * count
        return cls(moments, str(attrs.get("position", "after_activation")))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}: {m.width} units" for name, m in self.moments.items())
        return f"BnStatistics({shown}; {self.position})"


@dataclass(frozen=True)
class CalibratedModel:
    """What `insert_calibrated_bn` returns: the model with BN, the statistics it was calibrated with, and the
    identity measurement over the data given (None where no data was given): the largest absolute change of the
    outputs (`max_abs_diff`) and of the last dense layer's pre-activations (`max_abs_diff_logits`)."""
    model: "keras.Model"
    statistics: BnStatistics
    max_abs_diff: float | None
    max_abs_diff_logits: float | None
    samples: int


def _inputs(data: Any) -> Iterator[np.ndarray]:
    """The model inputs of each batch of `data`: a batched `tf.data.Dataset` (or any iterable of batches) of inputs
    or of (inputs, labels[, weights]) tuples, or one array of inputs (cut into batches here)."""
    if isinstance(data, np.ndarray):
        for start in range(0, len(data), DEFAULT_BATCH):
            yield np.asarray(data[start:start + DEFAULT_BATCH], dtype=np.float32)
        return
    for element in data:
        x = element[0] if isinstance(element, (tuple, list)) else element
        if isinstance(x, dict):
            raise ValueError("expected batches of one input tensor, got a dict of inputs")
        yield np.asarray(x, dtype=np.float32)  # the models compute in float32, whatever the data's dtype


def _as_chain(model: "keras.Model") -> "keras.Model":
    """A functional copy of a Sequential model (surgery reads `model.layers` as a functional model lists them)."""
    import keras

    from vggbn.numerics import models

    return models.copy_chain(model) if isinstance(model, keras.Sequential) else model


def bn_targets(model: "keras.Model", layers: str = "dense") -> list[str]:
    """The layers that get BN for `layers`: `dense` (every Dense layer but the last), `conv` (every Conv2D) or
    `all`, in model order."""
    from vggbn.numerics import surgery

    _check_choice("layers", layers, LAYER_CHOICES)
    return surgery.targets(model, layers)


def measure_statistics(model: "keras.Model", data: Any, *, layers: str = "dense",
                       position: str = "after_activation") -> BnStatistics:
    """Mean and variance of every unit that gets BN, in one float64 pass over `data`.

    Args:
        model: a Keras classifier whose layers form a chain (functional or Sequential), e.g. a VGG or its dense
            head alone.
        data: the model's inputs, batched: a `tf.data.Dataset` of images preprocessed as the model expects (or of
            features, for a dense head), with or without labels, or one array.
        layers: `dense`, `conv` or `all` (see `bn_targets`).
        position: `after_activation` (BN after the ReLU) or `before_activation` (between the linear part and it).
    """
    from vggbn.numerics import surgery

    _check_choice("position", position, POSITIONS)
    model = _as_chain(model)
    names = bn_targets(model, layers)
    if not names:
        raise VggbnError(f"model {model.name!r} has no layers that get BN for layers={layers!r}")
    moments = surgery.measure(model, _inputs(data), names, position)
    if any(m.count == 0 for m in moments.values()):
        raise VggbnError("the data holds no rows: nothing to measure")
    return BnStatistics(moments, position)


def identity_error(before: "keras.Model", after: "keras.Model", data: Any) -> tuple[float, float, int]:
    """(largest |output change|, largest |logit change|, rows) of `after` against `before` over `data`."""
    from vggbn.numerics import surgery

    report, _ = surgery.compare(_as_chain(before), _as_chain(after), ((x, None) for x in _inputs(data)))
    return report["max_abs_diff"], report["max_abs_diff_logits"], report["samples"]


def insert_calibrated_bn(model: "keras.Model", data: Any = None, *, statistics: BnStatistics | None = None,
                         layers: str = "dense", position: str = "after_activation") -> CalibratedModel:
    """A copy of `model` with BatchNormalization that computes what `model` does, calibrated to `data`.

    Each BN layer (named `<layer>_bn`) gets gamma = sqrt(variance + eps) and beta = moving mean = the mean its
    input has over `data`, moving variance = that variance: in inference it is the identity, and fine-tuning
    starts from the statistics the pretrained layer really produces. `model` itself is not changed.

    Args:
        model: see `measure_statistics`.
        data: see `measure_statistics`; measured unless `statistics` is given, and the identity is measured on it.
        statistics: statistics measured before (`measure_statistics`, `BnStatistics.load`, merged ones); its
            position applies, and its layers get BN.
        layers, position: see `measure_statistics` (ignored where `statistics` is given).
    Returns a `CalibratedModel` (`.model`, `.statistics`, `.max_abs_diff`, ...).
    """
    from vggbn.numerics import surgery

    if data is None and statistics is None:
        raise ValueError("Expected `data` (to measure the statistics on) or `statistics`. Received neither")
    chain = _as_chain(model)
    if statistics is None:
        statistics = measure_statistics(chain, data, layers=layers, position=position)
    table = {name: (statistics.mean(name), statistics.variance(name)) for name in statistics.layers}
    with_bn = surgery.insert_bn(chain, table, statistics.position)
    if data is None:
        return CalibratedModel(with_bn, statistics, None, None, 0)
    worst, worst_logits, rows = identity_error(chain, with_bn, data)
    return CalibratedModel(with_bn, statistics, worst, worst_logits, rows)


def export_serving(model: "keras.Model | str | os.PathLike", out: str | os.PathLike, *, resize: str = "squash",
                   preprocess: str = "caffe", class_names: Iterable[str] | None = None,
                   metrics: Mapping[str, Any] | None = None) -> None:
    """Write a SavedModel of `model` (a model or a `.keras` file) to the folder `out` whose serving signatures take
    raw images and resize and preprocess them as the pipeline does; see `vggbn.numerics.serving.export`."""
    from vggbn.numerics import models, serving

    if not hasattr(model, "layers"):
        model = models.load_model_file(model)
    serving.export(model, out, resize=resize, preprocess=preprocess,
                   class_names=None if class_names is None else list(class_names), metrics=metrics or {})
