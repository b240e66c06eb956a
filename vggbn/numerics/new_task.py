"""A new task's model from a trained dense part: its last Dense layer replaced by a fresh softmax over the new
classes, trained whole ('dense') or only its head ('head', on the frozen part's output, which `frozen_part` makes)."""

from __future__ import annotations

import keras

from vggbn.numerics import models


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
