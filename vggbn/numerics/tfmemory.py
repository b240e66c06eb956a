"""Give back what TensorFlow keeps of a finished training, so a grid of trainings holds one model at a time.

Measured with TF 2.21 / Keras 3.15: a model trained in a `tf.function` (Keras' `fit`, or a loop of our own over
`optimizer.apply_gradients`) is never freed, weights and Adam slots included, even after `del`, `gc.collect()` and
`keras.backend.clear_session()`. The chain: Keras' TensorFlow optimizer sums the gradients with
`tf.distribute.get_replica_context().all_reduce`, which is a `tf.custom_gradient`; traced in graph mode, each
such call registers its gradient function in TensorFlow's global gradient registry under a fresh
`CustomGradient-<n>` name, and nothing ever unregisters it (tensorflow/tensorflow#97697, #27492). The gradient
function's closure holds the traced graph's tensors, the graph holds the variable handles it captured, and a
resource variable lives as long as a handle does: about 1.4 GB per training of VGG16's dense part.

Also kept for good: the Python function of every `tf.data.Dataset.from_generator` made in eager mode, appended to
the global default graph's list of py_funcs (its "strong reference"), and with it the generator's state: the
open HDF5 files and shuffle buffers of each training's feature streams (about 28 MB a training of VGG16's dense
part, measured with two epochs).

`released()` unregisters the gradient functions that the trainings inside it registered, once they are over, drops
the py_funcs they added to the global graph, and collects the cycles they held. A registered gradient is only looked
up while a graph that uses it is being traced and differentiated, which ends with the training that traced it, and a
dataset's py_func is only called while the dataset is iterated; whatever was registered before the block (a model or
dataset that lives on) is left alone.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from typing import Iterator

log = logging.getLogger(__name__)

PREFIX = "CustomGradient-"  # the names `tf.custom_gradient` registers in graph mode


def _registry() -> dict | None:
    """TensorFlow's gradient registry (name -> {type, location}), or None where this TensorFlow keeps it elsewhere."""
    from tensorflow.python.framework import ops

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


def _global_py_funcs() -> list | None:
    """The global default graph's list of the py_funcs it keeps alive (made here if none was made yet, as
    `script_ops` makes it on first use), or None where this TensorFlow keeps them otherwise."""
    from tensorflow.python.framework import ops

    graph = ops.get_default_graph()
    if not hasattr(graph, "_py_funcs_used_in_graph"):
        graph._py_funcs_used_in_graph = []
    kept = graph._py_funcs_used_in_graph
    return kept if isinstance(kept, list) else None


@contextlib.contextmanager
def released() -> Iterator[None]:
    """Run a training inside; on leaving, free what TensorFlow kept of it once the caller has dropped the model.

    The caller drops its own references (the model, its optimizer, the returned history's tensors if any) inside
    the block; a model it still holds stays valid (only global entries are removed), but a `from_generator` dataset
    made inside the block cannot be iterated after it: its generator is gone.
    """
    registry, py_funcs = _registry(), _global_py_funcs()
    before = set(registry) if registry is not None else set()
    py_funcs_before = len(py_funcs) if py_funcs is not None else 0
    try:
        yield
    finally:
        if registry is None:
            log.debug("TensorFlow's gradient registry is not where vggbn.numerics.tfmemory looks: nothing unregistered")
        else:
            for name in [name for name in registry if name.startswith(PREFIX) and name not in before]:
                del registry[name]
        if py_funcs is None:
            log.debug("TensorFlow's global graph keeps no list of py_funcs where vggbn.numerics.tfmemory looks")
        else:
            del py_funcs[py_funcs_before:]  # the list only grows: what the block's datasets added
        gc.collect()
