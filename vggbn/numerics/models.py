"""Build or load the pretrained classifier and split it at the cut layer into a conv part and a dense part.

Every model here has VGG16's structure and layer names (`block1_conv1` ... `blockN_pool`, `flatten`, `fc1`,
`fc2`, `predictions`), so the demo classifier, `keras.applications.VGG16` and a user's own `.keras` file go
through the same code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from vggbn import VggbnError
from vggbn.cluster import distribute

DEMO_FILTERS = (16, 32, 64)  # the demo classifier's conv blocks; vggbn.runner.layer_names.DEMO_LAYERS names their layers

# Layers that may make up a classifier's head after the flatten or global pooling.
HEAD_LAYERS = (keras.layers.Dense, keras.layers.Dropout, keras.layers.Activation, keras.layers.Softmax,
               keras.layers.ReLU, keras.layers.BatchNormalization)
HEAD_ENTRIES = (keras.layers.Flatten, keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


class ModelError(VggbnError):
    pass


def build_demo_classifier(*, input_size: int = 32, num_classes: int = 10, filters: tuple[int, ...] = DEMO_FILTERS,
                          dense_units: int = 128, dropout: float = 0.5, seed: int = 0) -> keras.Model:
    """A small VGG16-shaped classifier without BatchNormalization.

    Args:
        input_size: side of the square RGB input; must be divisible by 2 ** len(filters).
        num_classes: units of the softmax `predictions` layer.
        filters: conv filters of each block (two 3x3 convs, then 2x2 max pooling, as in VGG16).
        dense_units: units of `fc1` and `fc2`.
        dropout: rate of the Dropout layers after `fc1` and `fc2`, as in the original VGG16.
        seed: seed of the weight initializers.
    """
    if input_size % 2 ** len(filters):
        raise ValueError(f"Expected `input_size` to be divisible by {2 ** len(filters)}. Received: input_size={input_size}")
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((input_size, input_size, 3), name="input_layer")
    x = inputs
    for block, width in enumerate(filters, start=1):
        for conv in (1, 2):
            x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", kernel_initializer=init,
                                    name=f"block{block}_conv{conv}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for index, name in enumerate(("fc1", "fc2")):
        x = keras.layers.Dense(dense_units, activation="relu", kernel_initializer=init, name=name)(x)
        x = keras.layers.Dropout(dropout, seed=seed + index, name=f"{name}_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=init, name="predictions")(x)
    return keras.Model(inputs, outputs, name="demo_vgg")


def load_model_file(path: str | Path) -> keras.Model:
    """Load a `.keras` (or legacy `.h5`) model with safe_mode on: no arbitrary code from a file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        with distribute.strategy().scope():  # variables mirrored on every replica's device
            return keras.saving.load_model(path, compile=False, safe_mode=True)
    except ValueError as error:
        if "safe_mode" in str(error) or "lambda" in str(error).lower():
            raise ModelError(f"{path}: refused to load: it holds a Lambda layer (arbitrary code), which safe_mode "
                             "forbids; rebuild the model without it") from None
        raise ModelError(f"{path}: cannot load model: {str(error).splitlines()[0]}") from None


def vgg16(weights: str | None) -> keras.Model:
    """`keras.applications.VGG16` with its dense head; weights: 'imagenet' (downloaded by Keras), 'none', or a file.

    'none' gives random weights from a fixed seed, the same on every run: the same params give the same model, so
    rerunning the stage that builds it does not rerun everything downstream.
    """
    if weights in (None, "imagenet"):
        return keras.applications.VGG16(weights="imagenet")
    if weights == "none":
        keras.utils.set_random_seed(0)
        return keras.applications.VGG16(weights=None)
    if not Path(weights).is_file():
        raise ModelError(f"model.weights: weights file {weights} not found (expected imagenet, none or a file)")
    return keras.applications.VGG16(weights=weights)


def head_start(model: keras.Model) -> int:
    """Index in `model.layers` of the head's first layer: the flatten or global pooling before the dense layers."""
    layers = model.layers
    index = len(layers)
    while index > 0 and isinstance(layers[index - 1], HEAD_LAYERS):
        index -= 1
    dense_count = sum(isinstance(layer, keras.layers.Dense) for layer in layers[index:])
    if dense_count == 0 or index == 0 or not isinstance(layers[index - 1], HEAD_ENTRIES):
        raise ModelError(f"model {model.name!r} has no dense head (a Flatten or global pooling layer followed by "
                         "Dense layers), so there is no dense part to give batch normalization")
    return index - 1


def default_cut(model: keras.Model) -> str:
    """The last layer before the dense head (`block5_pool` for VGG16)."""
    return model.layers[head_start(model) - 1].name


def cut_index(model: keras.Model, cut: str | None) -> int:
    names = [layer.name for layer in model.layers]
    cut = cut or default_cut(model)
    if cut not in names:
        raise ModelError(f"features.cut: model {model.name!r} has no layer {cut!r}; its layers: {', '.join(names)}")
    index = names.index(cut)
    if index >= head_start(model):
        raise ModelError(f"features.cut: {cut!r} is inside the dense head; cut at {default_cut(model)!r} or earlier")
    return index


def split(model: keras.Model, cut: str | None = None) -> tuple[keras.Model, keras.Model]:
    """(conv part, dense part): the model up to and including `cut`, and the layers after it as their own model.

    Both share the original layers (and weights), so `dense(conv(x)) == model(x)`; the layers after the cut must
    form a chain, which conv_features checks numerically on every run.
    """
    index = cut_index(model, cut)
    cut_layer = model.layers[index]
    conv = keras.Model(model.input, cut_layer.output, name=f"{model.name}_conv")
    inputs = keras.Input(cut_layer.output.shape[1:], name=f"{cut_layer.name}_features")
    x = inputs
    for layer in model.layers[index + 1:]:
        x = layer(x)
    dense = keras.Model(inputs, x, name=f"{model.name}_dense")
    return conv, dense


def join(conv: keras.Model, dense: keras.Model, name: str) -> keras.Model:
    """The full model: `dense`'s layers applied after `conv`, keeping every layer's name and weights."""
    x = conv.output
    for layer in dense.layers[1:]:
        x = layer(x)
    return keras.Model(conv.input, x, name=name)


def predictor(model: keras.Model, local: bool = False) -> Callable[[object], object]:
    """`model` in inference mode as a function of one batch (array or tensor), returning numpy arrays (a list of
    them for several outputs), traced once for every batch size.

    Keras' `predict_on_batch` traces its function again for a new batch size (a last, smaller batch); TensorFlow
    counts the traces of every Keras model's function together and warns of retracing when a few models in a row
    do so (conv_features' split check did).
    Under a strategy of several replicas, each replica computes a contiguous slice of every batch and every worker
    gets the whole output (every worker must call it with the same batches); `local` computes the whole batch in
    this process alone (a check only the chief runs).
    """
    if not local and distribute.replicas() > 1:  # each replica computes a slice of every batch
        def forward(x):
            return model(x, training=False)

        def predict_split(batch):
            return distribute.split_run(forward, np.asarray(batch, dtype=np.float32))
        return predict_split
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    run = tf.function(lambda x: model(x, training=False), input_signature=[spec], jit_compile=False)

    def predict(batch):
        outputs = run(tf.convert_to_tensor(batch, dtype=tf.float32))
        return [o.numpy() for o in outputs] if isinstance(outputs, (list, tuple)) else outputs.numpy()

    predict.function = run  # tests count its traces
    return predict


def input_size(model: keras.Model) -> tuple[int, int]:
    height, width = model.input_shape[1:3]
    if height is None or width is None:
        raise ModelError(f"model {model.name!r} takes images of any size; give it a fixed input shape")
    return int(height), int(width)


def copy_chain(model: keras.Model, *, name: str | None = None, configure=None, convert=None,
               after=None) -> keras.Model:
    """A copy of a chain-shaped model with its own weights, edited on the way. Weights are copied tensor to tensor:
    no numpy copy of every kernel, which at VGG16's scale (a 411 MB fc1 kernel) raised each training's peak memory.

    Args:
        name: the copy's name; None: the model's.
        configure: `configure(layer, config) -> config` edits a layer's config before it is rebuilt.
        convert: `convert(layer) -> (new_layer, weights)` replaces a layer, or None to copy it.
        after: `after(layer) -> [(new_layer, weights), ...]` layers to insert after `layer`, with their weights.
    """
    # a functional model lists its InputLayer first; a Sequential one does not list it
    layers = model.layers
    named = isinstance(layers[0], keras.layers.InputLayer)
    inputs = keras.Input(model.input_shape[1:], name=layers[0].name if named else None)
    x = inputs
    for layer in layers[1:] if named else layers:
        converted = convert(layer) if convert else None
        if converted is not None:
            clone, weights = converted
            x = clone(x)
            clone.set_weights(weights)
        else:
            config = layer.get_config()
            clone = layer.__class__.from_config(configure(layer, config) if configure else config)
            x = clone(x)
            for target, source in zip(clone.weights, layer.weights, strict=True):
                target.assign(source.value)
        for extra, weights in (after(layer) if after else []):
            x = extra(x)
            extra.set_weights(weights)
    return keras.Model(inputs, x, name=name or model.name)


def pretrained_classifier(*, source: str, weights: str | None, demo_path: str | Path) -> keras.Model:
    """The classifier to give batch normalization: `demo`, `vgg16` (with `weights`), or a model file's path.

    Whatever the source, it must have a dense head; otherwise this is a one-line error saying so.
    """
    if source == "demo":
        model = load_model_file(demo_path)
    elif source == "vgg16":
        model = vgg16(weights)
    else:
        model = load_model_file(source)
    head_start(model)
    input_size(model)
    return model


_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@distribute.chief_only
def save_weights(model: keras.Model, path: str | Path) -> None:
    """`model`'s weights alone (`.weights.h5`), atomically."""
    from vggbn.storage.atomic import atomic_path

    with atomic_path(path) as tmp:
        model.save_weights(tmp)


@distribute.chief_only
def save_model(model: keras.Model, path: str | Path) -> None:
    """Save in Keras' native format, atomically and byte-reproducibly.

    Keras stamps `.keras` files with the save time (`date_saved`, and a zip entry time). Same weights then give
    different bytes, and DVC reruns every stage downstream of a stage that reran with the same result. We fix
    both stamps, and renumber the memory addresses Keras writes as `shared_object_id`, so the file is a function of
    the model alone. A trained model is saved without its optimizer state (Adam's two slots per weight would
    triple VGG16's dense part); checkpoints keep it, elsewhere.
    """
    import json
    import zipfile

    from vggbn.storage.atomic import atomic_path, require_space, staging_folder

    if getattr(model, "optimizer", None) is not None:
        bare = model.__class__.from_config(model.get_config())
        bare.set_weights(model.get_weights())
        model = bare

    path = Path(path)
    # Keras writes into a folder of ours (it may put a temporary file of its own beside the model), then the file
    # is rewritten with fixed stamps: both copies are on disk at the end.
    require_space(path, 2 * variable_bytes(model))
    with atomic_path(path, needed=2 * variable_bytes(model)) as tmp, staging_folder(path) as staging:
        staged = staging / path.name
        model.save(staged)
        with zipfile.ZipFile(staged) as source, zipfile.ZipFile(tmp, "w") as target:
            for info in source.infolist():
                data = source.read(info)
                if info.filename == "metadata.json":
                    data = json.dumps({**json.loads(data), "date_saved": "reproducible"}).encode()
                elif info.filename == "config.json":
                    data = json.dumps(_stable_shared_ids(json.loads(data))).encode()
                entry = zipfile.ZipInfo(info.filename, date_time=_FIXED_ZIP_TIME)
                entry.compress_type, entry.external_attr = info.compress_type, info.external_attr
                target.writestr(entry, data)


def variable_bytes(model: keras.Model, optimizer: bool = False) -> int:
    """Bytes of a model's variables (and its optimizer's): about what saving it takes on disk."""
    variables = list(model.variables)
    if optimizer and getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables) + (1 << 16)


def _stable_shared_ids(config):
    """`config` with each distinct `shared_object_id` replaced by 1, 2, ... in order of appearance.

    Keras marks an object serialized twice in one save with `shared_object_id: id(obj)`, a memory address that
    differs from run to run (and may be a reused address of a temporary object). Loading only matches equal ids,
    so numbering them in order keeps what is shared and makes the bytes reproducible.
    """
    numbers: dict[int, int] = {}

    def walk(node):
        if isinstance(node, dict):
            if "shared_object_id" in node:
                node["shared_object_id"] = numbers.setdefault(node["shared_object_id"], len(numbers) + 1)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return config


def with_compute_dtype(model: keras.Model, compute: str) -> keras.Model:
    """`model` computing in `compute`: 'float32', or 'bfloat16' or 'float16' as Keras mixed precision (16-bit math,
    fp32 weights; float16 is the fast one on GPUs before Ampere, and needs loss scaling to train:
    `training.compile_for_training` adds it).

    A loaded model keeps the dtype policy it was saved with, so setting a global policy is not enough: the layers
    are rebuilt with the policy and given the same weights. The last layer stays float32, as Keras advises for
    a softmax output. Returns `model` itself when nothing changes.
    """
    policies = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
    if compute not in policies:
        raise ValueError(f"Expected `compute` to be one of {', '.join(policies)}. Received: compute={compute}")
    last = model.layers[-1]

    def wanted(layer):
        return "float32" if layer is last else policies[compute]

    if all(layer.dtype_policy.name == wanted(layer) for layer in model.layers[1:]):
        return model

    def rebuilt(layer):
        config = layer.get_config()
        if not isinstance(layer, keras.layers.InputLayer):
            config = {**config, "dtype": wanted(layer)}
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=rebuilt)
    clone.set_weights(model.get_weights())
    return clone


def output_names(class_names: list[str], num_outputs: int) -> list[str]:
    """The class name of each model output: the folders' names, or ImageNet's WordNet ids (see label_map)."""
    if num_outputs == len(class_names):
        return list(class_names)
    from vggbn.storage.imagenet import imagenet_wnids

    label_map(class_names, num_outputs)  # the same checks
    return imagenet_wnids()


def label_map(class_names: list[str], num_outputs: int) -> list[int]:
    """Model output index of each class folder (in sorted-folder order).

    A classifier with as many outputs as there are folders uses the sorted order (Keras' convention). An ImageNet
    classifier (1000 outputs) over folders named by WordNet ids uses ImageNet's class order, so a subset such as
    Imagenette's ten classes is labelled correctly.
    """
    if num_outputs == len(class_names):
        return list(range(num_outputs))
    from vggbn.storage.imagenet import imagenet_wnids

    wnids = imagenet_wnids()
    if num_outputs == len(wnids) and all(name in wnids for name in class_names):
        index = {wnid: i for i, wnid in enumerate(wnids)}
        return [index[name] for name in class_names]
    raise ModelError(f"the image folder has {len(class_names)} classes but the model has {num_outputs} outputs "
                     "(folders named by ImageNet WordNet ids may instead go with a 1000-output model)")


def _inbound_layer_names(node) -> list[str]:
    """Names of the layers whose outputs feed a node of a functional config (Keras 3 format)."""
    if isinstance(node, dict):
        if "keras_history" in node.get("config", {}):
            return [node["config"]["keras_history"][0]]
        return [name for value in node.values() for name in _inbound_layer_names(value)]
    if isinstance(node, (list, tuple)):
        return [name for value in node for name in _inbound_layer_names(value)]
    return []


def require_chain(model: keras.Model) -> None:
    """Raise unless each layer takes exactly the previous layer's output (VGG-style), as layer surgery needs."""
    layers = model.get_config().get("layers", [])
    for previous, layer in zip(layers, layers[1:]):
        inbound = _inbound_layer_names(layer.get("inbound_nodes", []))
        if inbound != [previous["name"]]:
            raise ModelError(f"model {model.name!r} is not a chain of layers at {layer['name']!r} (it takes "
                             f"{', '.join(inbound) or 'nothing'}): batch normalization can only be inserted into "
                             "VGG-style chains")
