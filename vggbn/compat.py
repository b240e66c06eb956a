"""Every private TensorFlow, Keras and DVC internal vggbn relies on, in one place, each one checked where it is used.

Nothing else in the package imports `keras.src`, `tensorflow.python` or a DVC module beyond `dvc.api`, or reads a
private attribute of another library's object (`tests/test_compat.py` checks the package's source for it). Each
function here names the internal it uses; where the internal is not where it was, it raises `InternalMoved`, one
line naming the internal, the installed versions and the versions vggbn was tested with, never a silent fallback
(a fallback in `gradient_registry` would keep about 1.4 GB per training, one in `dvc_cache_file` would recompute
every feature on every run). `tests/test_compat.py` checks that each internal still behaves as vggbn needs on the
installed versions.

Where a public API does the job it is used instead, outside this module: dropout masks come from
`keras.random.dropout` with the layer's `keras.random.SeedGenerator`, a layer's RNG states are `layer.variables`
less `layer.weights` (Keras documents the difference as the layer's seed generators' states), dvclive's metric names
come from its own Keras callback (`dvclive.keras.DVCLiveCallback.on_epoch_end`), and a revision's files from
`dvc.api.DVCFileSystem`.

Importing this module imports neither TensorFlow, Keras nor DVC: each function imports what it uses.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from vggbn import VggbnError

TESTED = "TensorFlow 2.21, Keras 3.15, DVC 3.67 and dvclive 3.49"  # as pinned in pyproject.toml and requirements.lock
LIBRARIES = {"tensorflow": "TensorFlow", "keras": "Keras", "dvc": "DVC", "dvclive": "dvclive"}


class InternalMoved(VggbnError):
    """A private TensorFlow, Keras or DVC internal is not where vggbn uses it: an untested version is installed."""


def installed() -> str:
    """The installed versions of the libraries whose internals this module uses, as a phrase."""
    def version(package):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "none"
    return ", ".join(f"{shown} {version(package)}" for package, shown in LIBRARIES.items())


def _moved(internal: str, consequence: str) -> InternalMoved:
    return InternalMoved(f"{internal} is not where vggbn uses it with {installed()} installed (tested with "
                         f"{TESTED}; `pip install --require-hashes -r requirements.lock` installs those): {consequence}")


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


# --- a collective's instance key (vggbn.cluster.distribute) ---------------------------------------------------------

def one_instance_key_per_collective() -> None:
    """Make each collective op of a traced function keep the instance key it got when traced, for all its calls.

    MultiWorkerMirroredStrategy's collectives (`CollectiveReplicaLauncher`, whose class attribute
    `_prefer_unique_instance_key` says so) take a fresh instance key at every call, and TensorFlow's C++ parameter
    resolver keeps a record of every key it has seen (`CollectiveParamResolverLocal::instance_table_`, never
    pruned): about 1.5 KB a collective, a training step's ten collectives 16 KB (measured: two workers' resident
    memory grew 0.8 MB/s, 2.9 GB an hour, with no end). With the attribute False, the keys are the ones TensorFlow
    gave before 2.5: fixed when the function is traced, so a worker must trace its functions exactly when the
    others do (`vggbn.numerics.training.Trainer` passes every worker inputs of the same shapes for that)."""
    from tensorflow.python.distribute import cross_device_utils

    launcher = getattr(cross_device_utils, "CollectiveReplicaLauncher", None)
    if not isinstance(getattr(launcher, "_prefer_unique_instance_key", None), bool):
        raise _moved("tensorflow.python.distribute.cross_device_utils.CollectiveReplicaLauncher."
                     "_prefer_unique_instance_key", "each collective would take a new instance key at every call "
                     "and TensorFlow keeps a record of each, so a multi-worker training's memory would grow "
                     "about 16 KB a step")
    launcher._prefer_unique_instance_key = False


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


# --- DVC: its cache, revisions and config (storage.dvccache, pages.report, pages.plots_template) ------------------

def dvc_errors() -> tuple[type[Exception], ...]:
    """The errors DVC raises for a bad repository, revision or config (`dvc.exceptions.DvcException`, and scmrepo's
    `SCMError` for git): what a caller turns into its own one-line error."""
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    return DvcException, SCMError


def dvc_cache_file(md5: str, *, legacy: bool) -> Path:
    """Where the local cache of the DVC project in the working folder keeps the object `md5`, by DVC's own
    configuration (all its levels, and the cache `dvc exp run` points a temporary workspace at): the private
    `dvc.repo.Repo().cache.local` (`.legacy` for a DVC 2 entry, which records no hash name) and its `oid_to_path`;
    `dvc.api` has no cache lookup. Opening the project raises what `dvc_errors` names (not a DVC project, a bad
    config)."""
    from dvc.repo import Repo

    with Repo() as repo:
        try:
            database = repo.cache.legacy if legacy else repo.cache.local
            return Path(database.oid_to_path(md5))
        except (AttributeError, TypeError) as error:
            raise _moved("dvc.repo.Repo().cache.local / .legacy and their oid_to_path",
                         f"no stage can find its previous output in DVC's cache, so none would reuse it ({error})") \
                from None


def check_dvc_revision(rev: str, root: str = ".") -> None:
    """Raise one of `dvc_errors()` where `rev` names neither a git revision nor an experiment of the DVC project in
    `root` (`dvc.api.DVCFileSystem` alone would say nothing): `dvc.repo.Repo` and `dvc.scm.resolve_rev`, as DVC's
    own commands resolve a revision."""
    from dvc.repo import Repo

    try:
        from dvc.scm import resolve_rev
    except ImportError as error:
        raise _moved("dvc.scm.resolve_rev", f"no revision can be checked ({error})") from None
    with Repo(root) as repo:
        resolve_rev(repo.scm, rev)


def _local_config(dvc_dir: str | Path):
    from dvc.config import Config

    return Config(dvc_dir=str(dvc_dir), validate=False)


def local_dvc_config(dvc_dir: str | Path, section: str, key: str):
    """The value of `section.key` in `dvc_dir`/config.local alone (None where unset): `dvc.config.Config`'s
    `load_one("local")`, which `dvc config --local` reads too. Raises what `dvc_errors` names for a bad file."""
    try:
        return _local_config(dvc_dir).load_one("local").get(section, {}).get(key)
    except (AttributeError, TypeError) as error:
        raise _moved("dvc.config.Config(...).load_one", f"DVC's local config cannot be read ({error})") from None


def set_local_dvc_config(dvc_dir: str | Path, section: str, key: str, value: str) -> None:
    """Set `section.key` to `value` in `dvc_dir`/config.local, keeping the rest of the file: `dvc.config.Config`'s
    `edit("local")`, as `dvc config --local` does. Raises what `dvc_errors` names for a bad file."""
    try:
        with _local_config(dvc_dir).edit("local", validate=False) as config:
            config.setdefault(section, {})[key] = value
    except (AttributeError, TypeError) as error:
        raise _moved("dvc.config.Config(...).edit", f"DVC's local config cannot be written ({error})") from None
