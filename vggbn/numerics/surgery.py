"""Insert identity-calibrated BatchNormalization into a classifier's layers, and prove it changed nothing.

A BatchNormalization layer in inference computes `gamma * (x - moving_mean) / sqrt(moving_variance + eps) + beta`.
With `gamma = sqrt(var + eps)`, `beta = moving_mean = mean` and `moving_variance = var`, that is `x` again, for any
mean and variance: the new model computes exactly what the old one did. The measured mean and variance matter
once fine-tuning starts: in training mode BN normalizes each batch and then rescales it by gamma and beta, which
start at the statistics the pretrained layer actually produces. (The 2017 notebook set gamma to the variance,
which is not the identity: its validation loss went from 1.52 to 4.76.)
"""

from __future__ import annotations

from typing import Iterable, Mapping

import keras
import numpy as np

from vggbn.numerics import models
from vggbn.cluster import distribute
from vggbn.numerics.moments import Moments
from vggbn.numerics.scoring import Score

EPSILON = 1e-3  # Keras' default BatchNormalization epsilon


def hidden_dense_names(model: keras.Model) -> list[str]:
    """The Dense layers that get a BN: every one but the classifier at the end."""
    names = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    return names[:-1]


def conv_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def _linear_copy(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The layer without its activation, same weights: its output is the pre-activation."""
    return layer.__class__.from_config({**layer.get_config(), "activation": "linear", "name": f"{layer.name}_linear"})


def tap_model(model: keras.Model, names: list[str], position: str = "after_activation") -> keras.Model:
    """A model whose outputs are the named layers' outputs, or with `before_activation` their pre-activations."""
    models.require_chain(model)
    inputs = keras.Input(model.input_shape[1:])
    x, taps = inputs, {}
    for layer in model.layers[1:]:
        if layer.name in names and position == "before_activation":
            linear = _linear_copy(layer)
            taps[layer.name] = linear(x)
            linear.set_weights(layer.get_weights())
        x = layer(x)
        if layer.name in names and position == "after_activation":
            taps[layer.name] = x
    return keras.Model(inputs, [taps[name] for name in names])


class NonFiniteActivations(ValueError):
    """A measured layer's output holds NaN or infinity: its moments would too."""

    def __init__(self, layer: str, units: list[int], batch: int, row: int):
        self.layer, self.units, self.batch, self.row = layer, units, batch, row
        self.shown = ", ".join(map(str, units[:8])) + (f" and {len(units) - 8} more" if len(units) > 8 else "")
        super().__init__(f"{layer}: units {self.shown} are not finite in batch {batch}, row {row}")


def measure(model: keras.Model, batches: Iterable[np.ndarray], names: list[str] | None = None,
            position: str = "after_activation", shared: bool = False) -> dict[str, Moments]:
    """Per-unit (per-channel for conv maps) moments of each named layer's output over all batches.

    Default names: the hidden dense layers. Moments pool every axis but the last: batch for dense outputs,
    batch, height and width for conv maps. Raises NonFiniteActivations at the first batch in which a layer's
    output is not finite (numbered from 0; `row` is the first such row in it), naming the layer and its units.
    `shared`: `batches` are this worker's own rows of each batch (`distribute.my_share`), as (rows, the whole
    batch's row count) pairs; the other workers hold the rest, and only moments travel.
    """
    names = hidden_dense_names(model) if names is None else names
    taps = tap_model(model, names, position)
    moments = {name: Moments(taps.outputs[i].shape[-1]) for i, name in enumerate(names)}
    if shared:
        return _measure_on_replicas(taps, names, batches, moments, shared=True)
    if distribute.replicas() > 1:
        return _measure_on_replicas(taps, names, batches, moments)
    predict = models.predictor(taps)
    for number, batch in enumerate(batches):
        outputs = predict(batch)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for name, output in zip(names, outputs):
            finite = np.isfinite(output)
            if not finite.all():
                rows = finite.reshape(len(output), -1).all(axis=1)
                units = np.flatnonzero(~finite.reshape(-1, output.shape[-1]).all(axis=0)).tolist()
                raise NonFiniteActivations(name, units, number, int(np.argmin(rows)))
            moments[name].update(output)
    return moments


def measure_images(model: keras.Model, inputs, paths: list[str], names: list[str],
                   position: str = "after_activation", track=None) -> dict[str, Moments]:
    """`measure` of `model`'s layers `names` over the images `paths`, read by `inputs` (an `images.ImageInput`).
    Under a multi-worker strategy each worker decodes only its own rows of each batch (`distribute.own_images`)
    and only moments travel. `track(batches, images, size)`, if given, wraps the batches (a progress bar), `size`
    giving a batch's image count."""
    shared = distribute.multi_worker()
    size = models.input_size(model)
    if shared:
        totals = [len(paths[i:i + inputs.batch_size]) for i in range(0, len(paths), inputs.batch_size)]
        batches = zip(distribute.own_images(inputs, paths, size), totals)
    else:
        batches = inputs.dataset(paths, size)
    if track is not None:
        batches = track(batches, len(paths), (lambda pair: pair[1]) if shared else len)
    return measure(model, batches, names, position, shared=shared)


def _measure_on_replicas(taps: keras.Model, names: list[str], batches, moments: dict[str, Moments],
                         shared: bool = False):
    """`measure` with each replica reducing its slice of every batch to float64 count, mean and M2 per unit, merged
    on every worker in replica order (Chan's merge, as for batches): activations never travel, only moments."""
    import tensorflow as tf

    def slice_moments(x, valid):
        outputs = taps(x, training=False)
        result = []
        for output in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
            per_row = tf.reshape(tf.cast(output, tf.float64), (tf.shape(output)[0], -1, output.shape[-1]))
            weight = tf.cast(valid, tf.float64)[:, None, None]  # padding rows count for nothing
            count = tf.reduce_sum(weight) * tf.cast(tf.shape(per_row)[1], tf.float64)
            mean = tf.math.divide_no_nan(tf.reduce_sum(per_row * weight, axis=(0, 1)), count)
            m2 = tf.reduce_sum(tf.square(per_row - mean) * weight, axis=(0, 1))
            finite = tf.math.is_finite(per_row) | (weight == 0)
            result += [count[None], mean[None], m2[None], tf.cast(~tf.reduce_all(finite, axis=(0, 1)), tf.int32)[None],
                       tf.cast(~tf.reduce_all(finite, axis=(1, 2)), tf.int32)]
        return result

    for number, batch in enumerate(batches):
        if shared:  # this worker's rows of the batch
            mine, total = batch
            shares = distribute.shares(total)
            outputs = distribute.gather_shares(slice_moments, shares, mine, np.ones(len(mine), np.float32),
                                               trim=False)
            rows = distribute.gathered_rows(shares)
        else:
            batch = np.asarray(batch)
            outputs = distribute.split_run(slice_moments, batch, np.ones(len(batch), np.float32), trim=False)
            rows = np.arange(len(outputs[4]))
        for index, name in enumerate(names):
            counts, means, m2s, bad_units, bad_rows = outputs[5 * index:5 * index + 5]
            if bad_units.any():
                raise NonFiniteActivations(name, np.flatnonzero(bad_units.any(axis=0)).tolist(), number,
                                           int(rows[np.argmax(bad_rows * (rows >= 0))]))
            for count, mean, m2 in zip(counts, means, m2s):
                part = Moments(len(mean))
                part.count, part.mean, part.m2 = int(round(count)), mean, m2
                moments[name].merge(part)
    return moments


def calibrated_weights(mean: np.ndarray, variance: np.ndarray, epsilon: float = EPSILON) -> list[np.ndarray]:
    """BatchNormalization weights (gamma, beta, moving_mean, moving_variance) that make the layer the identity."""
    mean = np.asarray(mean, dtype=np.float64)
    variance = np.asarray(variance, dtype=np.float64)
    if mean.shape != variance.shape or mean.ndim != 1:
        raise ValueError(f"expected mean and variance of one shape (units,), got {mean.shape} and {variance.shape}")
    if (variance < 0).any() or not np.isfinite(mean).all() or not np.isfinite(variance).all():
        raise ValueError("expected finite means and non-negative finite variances")
    gamma = np.sqrt(variance + epsilon)
    return [w.astype(np.float32) for w in (gamma, mean, mean, variance)]


def insert_bn(model: keras.Model, statistics: Mapping[str, tuple[np.ndarray, np.ndarray]],
              position: str = "after_activation", epsilon: float = EPSILON) -> keras.Model:
    """A copy of `model` with a calibrated BatchNormalization named `<layer>_bn` at each layer in `statistics`.

    `statistics` maps a layer name to the (mean, variance) of its output (`after_activation`: BN after the layer,
    the 2017 notebook's placement) or of its pre-activation (`before_activation`: Ioffe and Szegedy's placement;
    the layer loses its activation, and BN is followed by an `Activation` layer named `<layer>_act`). Either way
    the copy computes what `model` does. It has its own weights, so training it leaves `model` untouched.
    """
    if position not in ("after_activation", "before_activation"):
        raise ValueError(f"Expected `position` to be one of after_activation, before_activation. Received: {position}")
    unknown = set(statistics) - {layer.name for layer in model.layers}
    if unknown:
        raise ValueError(f"statistics name layers that {model.name!r} does not have: {', '.join(sorted(unknown))}")
    models.require_chain(model)
    before = position == "before_activation"

    def drop_activation(layer, config):
        return {**config, "activation": "linear"} if before and layer.name in statistics else config

    def calibrated_bn(layer):
        if layer.name not in statistics:
            return []
        mean, variance = statistics[layer.name]
        added = [(keras.layers.BatchNormalization(epsilon=epsilon, name=f"{layer.name}_bn"),
                  calibrated_weights(mean, variance, epsilon))]
        activation = layer.get_config().get("activation", "linear")
        if before and activation != "linear":
            added.append((keras.layers.Activation(activation, name=f"{layer.name}_act"), []))
        return added

    return models.copy_chain(model, name=f"{model.name}_bn", configure=drop_activation, after=calibrated_bn)


def with_logits(model: keras.Model) -> keras.Model:
    """`model` with a second output: the last Dense layer's pre-activation (the logits before the softmax).

    Near-uniform probabilities (random weights, 1000 classes) hide differences that the logits still show.
    """
    last = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    linear = keras.layers.Dense.from_config({**last.get_config(), "activation": "linear", "name": f"{last.name}_logits"})
    inputs = keras.Input(model.input_shape[1:])
    x, logits = inputs, None
    for layer in model.layers[1:]:
        if layer is last:
            logits = linear(x)
            linear.set_weights(last.get_weights())
        x = layer(x)
    return keras.Model(inputs, [x, logits])


def compare(before: keras.Model, after: keras.Model, batches: Iterable[tuple[np.ndarray, np.ndarray | None]],
            max_points: int = 0) -> tuple[dict, list[tuple[float, float]]]:
    """Run both models over (features, labels) batches: the largest differences, the rows, each model's loss and
    accuracy (where labels are given; None: the differences only), and for the first `max_points` samples
    (probability before, probability after) of the top class before.
    """
    before, after = models.predictor(with_logits(before)), models.predictor(with_logits(after))
    scores = {"before": Score(), "after": Score()}
    worst_p = worst_logit = 0.0
    samples = 0
    points = []
    for features, labels in batches:
        p_before, logits_before = before(features)
        p_after, logits_after = after(features)
        worst_p = max(worst_p, float(np.abs(p_before - p_after).max(initial=0.0)))
        worst_logit = max(worst_logit, float(np.abs(logits_before - logits_after).max(initial=0.0)))
        samples += len(p_before)
        if labels is not None:
            scores["before"].add(p_before, labels)
            scores["after"].add(p_after, labels)
        if len(points) < max_points:
            top = p_before.argmax(axis=1)
            rows = np.arange(len(top))
            points.extend(zip(p_before[rows, top].tolist(), p_after[rows, top].tolist()))
    report = {"max_abs_diff": worst_p, "max_abs_diff_logits": worst_logit, "samples": samples}
    for side, score in scores.items() if scores["before"].count else ():
        result = score.result()
        report.update({f"loss_{side}": result["loss"], f"accuracy_{side}": result["accuracy"]})
    return report, points[:max_points]


def targets(model: keras.Model, layers: str) -> list[str]:
    """Layers of `model` that get BN for `bn.layers` (dense, conv or all), in model order."""
    wanted = set(hidden_dense_names(model)) if layers in ("dense", "all") else set()
    wanted |= set(conv_names(model)) if layers in ("conv", "all") else set()
    return [layer.name for layer in model.layers if layer.name in wanted]
