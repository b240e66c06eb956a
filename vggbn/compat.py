"""Every private TensorFlow and Keras internal vggbn relies on, in one place, each one checked where it is used.

Nothing else in the package imports `keras.src` or `tensorflow.python` or reads a private attribute of another
library's object (`tests/test_compat.py` checks the package's source for it). Each function here names the
internal it uses; where the internal is not where it was, it raises `InternalMoved`, one line naming the
internal, the installed TensorFlow and Keras and the versions vggbn was tested with, never a silent fallback
(a fallback in `gradient_registry` would keep about 1.4 GB per training). `tests/test_compat.py` checks that each
internal still behaves as vggbn needs on the installed versions.

Where a public API does the job it is used instead, outside this module: dropout masks come from
`keras.random.dropout` with the layer's `keras.random.SeedGenerator`, and a layer's RNG states are
`layer.variables` less `layer.weights` (Keras documents the difference as the layer's seed generators' states).

Importing this module imports neither TensorFlow nor Keras: each function imports what it uses.
"""

from __future__ import annotations

from vggbn import VggbnError

TESTED = "TensorFlow 2.21 and Keras 3.15"  # as pinned in pyproject.toml and requirements.lock


class InternalMoved(VggbnError):
    """A private TensorFlow or Keras internal is not where vggbn uses it: an untested version is installed."""


def _moved(internal: str, consequence: str) -> InternalMoved:
    import keras
    import tensorflow as tf

    return InternalMoved(f"{internal} is not where vggbn uses it in TensorFlow {tf.__version__} / Keras "
                         f"{keras.__version__} (tested with {TESTED}; `pip install -r requirements.lock` installs "
                         f"them): {consequence}")


# --- Keras' Adam: its slots, for FusedAdam (vggbn.numerics.optimizers) ---------------------------------------------

def adam_slots(optimizer, variable) -> tuple:
    """(momentum, velocity): the Keras variables of `keras.optimizers.Adam` `optimizer`'s two slots for `variable`,
    by its private `_get_variable_index`, `_momentums` and `_velocities` (Keras has no public slot lookup)."""
    try:
        index = optimizer._get_variable_index(variable)
        return optimizer._momentums[index], optimizer._velocities[index]
    except (AttributeError, TypeError) as error:
        raise _moved("keras.optimizers.Adam's _get_variable_index, _momentums and _velocities",
                     f"FusedAdam cannot find the slots it updates ({error})") from None


# --- a layer's `call`, replaced on one instance (vggbn.numerics.training's global-batch Dropout) --------------------

def replace_call(layer, call) -> None:
    """Make `layer(...)` run `call(inputs, training=...)` instead of its class's `call`, on this instance only.

    Keras' `Layer.__call__` looks `self.call` up on each call, so an instance attribute shadows the class's method;
    nothing public says so. `restore_call` puts the class's own back."""
    if not callable(getattr(type(layer), "call", None)):
        raise _moved(f"{type(layer).__name__}.call", "no `call` method to replace on the layer's class")
    layer.call = call


def restore_call(layer) -> None:
    """Undo `replace_call`: the layer's class's own `call` again."""
    vars(layer).pop("call", None)


# --- what TensorFlow keeps of a finished training (vggbn.numerics.tfmemory) ---------------------------------------

CUSTOM_GRADIENT_PREFIX = "CustomGradient-"  # the names `tf.custom_gradient` registers in graph mode


def gradient_registry() -> dict:
    """TensorFlow's global gradient registry (name -> {type, location}): the private `_registry` dict of
    `tensorflow.python.framework.ops._gradient_registry`, where `tf.custom_gradient` registers each gradient
    function it traces, under `CUSTOM_GRADIENT_PREFIX` and a number, and never unregisters it."""
    from tensorflow.python.framework import ops

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    if not isinstance(registry, dict):
        raise _moved("tensorflow.python.framework.ops._gradient_registry._registry",
                     "the custom gradients of a training cannot be unregistered, and each training would keep "
                     "its model and optimizer (about 1.4 GB at VGG16's dense part)")
    return registry


def global_py_funcs() -> list:
    """The global default graph's private `_py_funcs_used_in_graph` list, where TensorFlow keeps the Python function
    of every py_func traced outside a `tf.function` (a `tf.data.Dataset.from_generator` made in eager mode: its
    generator) alive for good. Made here if no py_func made it yet, as `tensorflow.python.ops.script_ops` makes it
    on first use; that TensorFlow still appends to it is checked once per process (`_check_py_funcs_list`)."""
    import tensorflow as tf

    graph = tf.compat.v1.get_default_graph() if tf.executing_eagerly() else None
    if graph is None:
        raise RuntimeError("vggbn.compat.global_py_funcs: only in eager mode, outside a tf.function")
    if not hasattr(graph, "_py_funcs_used_in_graph"):
        graph._py_funcs_used_in_graph = []
    kept = graph._py_funcs_used_in_graph
    if not isinstance(kept, list):
        raise _moved("the global graph's _py_funcs_used_in_graph", "it is no list")
    _check_py_funcs_list(id(graph))
    return kept


_checked_graphs: set[int] = set()


def _check_py_funcs_list(graph_id: int) -> None:
    """Once per global graph: a `from_generator` dataset made now adds its functions to the list (three in TF 2.21;
    removed again), else the list is not where TensorFlow keeps them and `InternalMoved` says so."""
    import tensorflow as tf

    if graph_id in _checked_graphs:
        return
    kept = tf.compat.v1.get_default_graph()._py_funcs_used_in_graph
    before = len(kept)
    tf.data.Dataset.from_generator(lambda: iter(()), output_signature=tf.TensorSpec((), tf.int32))
    added = len(kept) - before
    del kept[before:]
    if added < 1:
        raise _moved("the global graph's _py_funcs_used_in_graph",
                     "a from_generator dataset added nothing to it: each training's feature streams (open HDF5 "
                     "files, shuffle buffers) would be kept for good")
    _checked_graphs.add(graph_id)
