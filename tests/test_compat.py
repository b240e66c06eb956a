"""The private TensorFlow, Keras and DVC internals vggbn uses live in `vggbn.compat` alone, and each still does what
vggbn needs on the installed versions: a newer TensorFlow, Keras or DVC that moves one fails here, with a message
naming the internal and the versions vggbn was tested with, not silently in a training or a stage."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPAT = "vggbn/compat.py"
ALLOWED: set[tuple[str, str]] = set()  # no private import outside vggbn.compat (Slurm's cluster: its own variables)
PRIVATE_MODULES = ("keras.src", "tensorflow.python", "dvc", "dvclive", "dvc_data", "dvc_objects", "scmrepo")
PUBLIC_MODULES = ("dvc.api", "dvclive", "dvclive.keras")  # DVC's Python API; dvclive's logger, Keras callback
ATTRIBUTE_FUNCTIONS = ("getattr", "hasattr", "setattr", "delattr")
DOCUMENTED_UNDERSCORED = ("os._exit",)  # the standard library's own API, despite the underscore


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_module(module: str) -> bool:
    return module not in PUBLIC_MODULES and any(module == m or module.startswith(m + ".") for m in PRIVATE_MODULES)


def private_uses(source: str, path: str = "<source>") -> list[str]:
    """'path:line: what' for each private import or private attribute of another object in `source`: an import
    from `keras.src`, `tensorflow.python` or DVC beyond its API, a `_name` imported from another package, `x._name`
    where `x` is not `self` or `cls`, and `getattr(x, "_name")` and its kin."""
    found = []
    for node in ast.walk(ast.parse(source)):
        what = None
        if isinstance(node, ast.Import):
            what = next((a.name for a in node.names if _private_module(a.name)), None)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if _private_module(node.module) and (path, node.module) not in ALLOWED:
                what = f"from {node.module} import ..."
            elif node.module.split(".")[0] != "vggbn" and any(_private(a.name) for a in node.names):
                what = f"from {node.module} import {', '.join(a.name for a in node.names)}"
        elif isinstance(node, ast.Attribute) and _private(node.attr) and ast.unparse(node) not in DOCUMENTED_UNDERSCORED:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                what = f"{ast.unparse(node)}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ATTRIBUTE_FUNCTIONS
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and _private(node.args[1].value)):
            what = ast.unparse(node)
        if what:
            found.append(f"{path}:{node.lineno}: {what}")
    return found


def test_no_private_internal_outside_compat():
    found = []
    for file in sorted((ROOT / "vggbn").rglob("*.py")):
        path = file.relative_to(ROOT).as_posix()
        if path != COMPAT:
            found += private_uses(file.read_text(), path)
    assert not found, "private TensorFlow/Keras/DVC internals outside vggbn/compat.py:\n" + "\n".join(found)


@pytest.mark.parametrize("source", [
    "from keras.src.random.seed_generator import draw_seed",
    "from dvc.repo import Repo",
    "from dvclive.utils import standardize_metric_name",
    "import scmrepo.exceptions",
    "import tensorflow.python.framework.ops",
    "from tensorflow.python.framework import ops",
    "from keras.optimizers import _private_thing",
    "index = optimizer._get_variable_index(v)",
    "self.model.optimizer._momentums[0]",
    "super()._update(x)",
    "getattr(graph, '_py_funcs_used_in_graph', [])",
    "setattr(graph, '_py_funcs_used_in_graph', [])",
])
def test_the_check_finds_each_kind_of_private_use(source):
    assert len(private_uses(source)) == 1 and private_uses(source)[0].startswith("<source>:1: ")


@pytest.mark.parametrize("source", [
    "self._rows = 1", "cls._cache.clear()", "x.__class__", "from vggbn.numerics.training import _plain_dense",
    "getattr(layer, 'rate', None)", "import keras.random", "import tensorflow as tf",
    "from dvc.api import DVCFileSystem", "from dvclive import Live", "from dvclive.keras import DVCLiveCallback",
])
def test_the_check_leaves_public_and_own_names_alone(source):
    assert private_uses(source) == []


def moved_message(internal: str) -> str:
    from vggbn import compat

    return (f"{internal} no longer does what vggbn.compat relies on with {compat.installed()} "
            f"(tested with {compat.TESTED})")


# --- each internal, on the installed versions ---------------------------------------------------------------------

def test_adam_slots_are_the_slots_adam_updates():
    """`compat.adam_slots` gives the momentum and velocity Keras' own Adam update writes for that variable."""
    import keras
    import tensorflow as tf

    from vggbn import compat

    variables = [keras.Variable(np.ones((2, 3), "float32"), name="a"), keras.Variable(np.ones(4, "float32"), name="b")]
    optimizer = keras.optimizers.Adam(learning_rate=0.1, beta_1=0.9, beta_2=0.99)
    gradients = [tf.fill((2, 3), 2.0), tf.fill((4,), 3.0)]
    optimizer.apply(gradients, variables)
    for variable, gradient in zip(variables, gradients):
        momentum, velocity = compat.adam_slots(optimizer, variable)
        assert momentum.shape == variable.shape, moved_message("Adam's _get_variable_index/_momentums/_velocities")
        np.testing.assert_allclose(momentum.numpy(), 0.1 * gradient.numpy(), rtol=1e-6,
                                   err_msg=moved_message("Adam's _momentums"))
        np.testing.assert_allclose(velocity.numpy(), 0.01 * gradient.numpy() ** 2, rtol=1e-6,
                                   err_msg=moved_message("Adam's _velocities"))


def test_adam_slots_of_an_optimizer_without_them_is_a_one_line_error():
    import keras

    from vggbn import compat

    variable = keras.Variable(np.ones(2, "float32"))
    sgd = keras.optimizers.SGD()
    sgd.build([variable])
    with pytest.raises(compat.InternalMoved, match=r"^keras\.optimizers\.Adam's _get_variable_index, _momentums "
                                                   r"and _velocities is not where vggbn uses it with TensorFlow "
                                                   r"\S+, Keras \S+, DVC \S+, dvclive \S+ installed \(tested with "
                                                   r"TensorFlow 2\.21, Keras 3\.15, DVC 3\.67 and dvclive 3\.49; "
                                                   r".*FusedAdam cannot find the slots") as error:
        compat.adam_slots(sgd, variable)
    assert "\n" not in str(error.value)


def test_a_replaced_call_is_what_keras_runs_on_that_instance_only():
    """Keras' `Layer.__call__` runs an instance's own `call`, with `training`, eagerly, in a traced function and
    while building a functional model; `restore_call` gives the class's back."""
    import keras
    import tensorflow as tf

    from vggbn import compat

    patched, other = keras.layers.Dropout(0.5, seed=1), keras.layers.Dropout(0.5, seed=1)
    seen = []

    def doubled(inputs, training=False):
        seen.append(training)
        return inputs * 2.0

    compat.replace_call(patched, doubled)
    x = tf.ones((4, 3))
    message = moved_message("an instance's `call` (Keras' Layer.__call__ looking up self.call)")
    np.testing.assert_array_equal(patched(x, training=True).numpy(), 2 * np.ones((4, 3)), err_msg=message)
    np.testing.assert_array_equal(tf.function(lambda v: patched(v, training=True))(x).numpy(), 2 * np.ones((4, 3)),
                                  err_msg=message)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, patched(inputs))
    np.testing.assert_array_equal(model(x, training=True).numpy(), 2 * np.ones((4, 3)), err_msg=message)
    assert True in seen, message
    # The other instance: Keras' own dropout, zeros among the kept inputs (a patch leaking to the class would double
    # every one of them)
    assert set(np.unique(other(tf.ones((64, 32)), training=True).numpy())) == {0.0, 2.0}, "the patch left its instance"
    compat.restore_call(patched)
    assert "call" not in vars(patched)
    dropped = patched(tf.ones((64, 32)), training=True).numpy()
    assert set(np.unique(dropped)) == {0.0, 2.0}  # Keras' Dropout again: zeros and kept inputs scaled by 2


def test_traced_custom_gradients_are_registered_where_compat_looks():
    """Each `tf.custom_gradient` traced in a `tf.function` adds a `CustomGradient-<n>` entry to the registry
    `compat.gradient_registry` gives (what `tfmemory.released` removes after a training)."""
    import tensorflow as tf

    from vggbn import compat

    registry = compat.gradient_registry()
    before = set(registry)

    @tf.custom_gradient
    def scaled(x):
        return 3.0 * x, lambda dy: 3.0 * dy

    def loss(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = scaled(x)
        return tape.gradient(y, x)

    assert float(tf.function(loss)(tf.constant(1.0))) == 3.0
    added = [name for name in registry if name not in before]
    assert added and all(name.startswith(compat.CUSTOM_GRADIENT_PREFIX) for name in added), \
        moved_message(f"TensorFlow's gradient registry (added: {added})")
    for name in added:
        del registry[name]


def test_eager_from_generator_datasets_are_kept_where_compat_looks():
    import tensorflow as tf

    from vggbn import compat

    kept = compat.global_py_funcs()
    before = len(kept)
    dataset = tf.data.Dataset.from_generator(lambda: iter([1, 2]), output_signature=tf.TensorSpec((), tf.int32))
    assert len(compat.global_py_funcs()) > before, moved_message("the global graph's _py_funcs_used_in_graph")
    assert [int(v) for v in dataset] == [1, 2]
    del kept[before:]


def test_a_moved_gradient_registry_is_a_one_line_error_not_a_silent_leak(monkeypatch):
    """Where TensorFlow keeps its registry elsewhere, `tfmemory.released` refuses before any training runs."""
    from tensorflow.python.framework import ops

    from vggbn import compat
    from vggbn.numerics import tfmemory

    monkeypatch.setattr(ops, "_gradient_registry", object())  # as if TensorFlow had moved it
    with pytest.raises(compat.InternalMoved, match=r"^tensorflow\.python\.framework\.ops\._gradient_registry\."
                                                   r"_registry is not where vggbn uses it .*about 1\.4 GB"):
        with tfmemory.released():
            pytest.fail("the block ran")


def test_collectives_keep_their_traced_instance_key_where_compat_sets_it(monkeypatch):
    """The switch is the class attribute TensorFlow's multi-worker collectives read for each key (its effect, memory
    that stays flat over thousands of steps, is the soak test's); where it has moved, a one-line error."""
    from tensorflow.python.distribute import cross_device_utils

    from vggbn import compat

    launcher = cross_device_utils.CollectiveReplicaLauncher
    monkeypatch.setattr(launcher, "_prefer_unique_instance_key", True)
    compat.one_instance_key_per_collective()
    assert launcher._prefer_unique_instance_key is False
    monkeypatch.delattr(launcher, "_prefer_unique_instance_key")
    with pytest.raises(compat.InternalMoved, match=r"^tensorflow\.python\.distribute\.cross_device_utils\."
                                                   r"CollectiveReplicaLauncher\._prefer_unique_instance_key is not "
                                                   r"where vggbn uses it .*16 KB a step$"):
        compat.one_instance_key_per_collective()


def test_a_py_funcs_list_tensorflow_no_longer_fills_is_a_one_line_error(monkeypatch):
    import tensorflow as tf

    from vggbn import compat

    graph = tf.compat.v1.get_default_graph()
    monkeypatch.setattr(compat, "_checked_graphs", set())
    monkeypatch.setattr(graph, "_py_funcs_used_in_graph", ())  # no list: TensorFlow keeps them otherwise
    with pytest.raises(compat.InternalMoved, match=r"^the global graph's _py_funcs_used_in_graph is not where"):
        compat.global_py_funcs()


# --- DVC ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory):
    """A git repository with DVC, one file added to DVC and committed: (folder, the file's md5)."""
    import yaml
    from project import run

    root = tmp_path_factory.mktemp("dvc")
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    (root / "data.txt").write_text("some data\n")
    run(["dvc", "add", "-q", "data.txt"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "data"], root)
    return root, yaml.safe_load((root / "data.txt.dvc").read_text())["outs"][0]["md5"]


def test_dvc_cache_file_is_where_dvc_keeps_the_object(dvc_project, monkeypatch):
    from vggbn import compat

    root, md5 = dvc_project
    monkeypatch.chdir(root)
    path = compat.dvc_cache_file(md5, legacy=False)
    assert path == root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:], moved_message("DVC's cache.local")
    assert path.read_text() == "some data\n"
    assert compat.dvc_cache_file(md5, legacy=True) == root / ".dvc" / "cache" / md5[:2] / md5[2:], \
        moved_message("DVC's cache.legacy")


def test_a_moved_dvc_cache_lookup_is_a_one_line_error_not_a_recomputation(dvc_project, monkeypatch):
    """Where DVC's cache no longer answers `oid_to_path`, the stage stops (every run recomputing its features would
    be the silent alternative)."""
    from dvc_data.hashfile.db.local import LocalHashFileDB

    from vggbn import compat
    from vggbn.storage import dvccache

    root, md5 = dvc_project
    monkeypatch.chdir(root)
    for cls in LocalHashFileDB.__mro__:  # as if DVC had renamed it
        if "oid_to_path" in vars(cls):
            monkeypatch.delattr(cls, "oid_to_path")
    (root / "dvc.lock").write_text(f"schema: '2.0'\nstages:\n  s:\n    cmd: x\n    outs:\n    - path: data.txt\n"
                                   f"      hash: md5\n      md5: {md5}\n")
    try:
        with pytest.raises(compat.InternalMoved, match=r"^dvc\.repo\.Repo\(\)\.cache\.local / \.legacy and their "
                                                       r"oid_to_path is not where vggbn uses it .*none would reuse"):
            dvccache.previous_output("data.txt")
    finally:
        (root / "dvc.lock").unlink()


def test_dvc_revisions_resolve_as_dvc_resolves_them(dvc_project):
    from vggbn import compat

    root, _ = dvc_project
    compat.check_dvc_revision("HEAD", str(root))
    with pytest.raises(compat.dvc_errors()):
        compat.check_dvc_revision("no-such-revision", str(root))


def test_local_dvc_config_is_what_dvc_config_reads(dvc_project):
    """Set through `dvc.config.Config` and read back by `dvc config --local` (DVC's public command), and the other
    way round; the file's other settings kept."""
    from project import run

    from vggbn import compat

    root, _ = dvc_project
    dvc_dir = root / ".dvc"
    run(["dvc", "config", "--local", "core.autostage", "true"], root)
    assert compat.local_dvc_config(dvc_dir, "plots", "html_template") is None
    compat.set_local_dvc_config(dvc_dir, "plots", "html_template", "../page.html")
    assert run(["dvc", "config", "--local", "plots.html_template"], root).stdout.strip() == "../page.html", \
        moved_message("dvc.config.Config(...).edit")
    assert run(["dvc", "config", "--local", "core.autostage"], root).stdout.strip() == "true"
    run(["dvc", "config", "--local", "plots.html_template", "other.html"], root)
    assert compat.local_dvc_config(dvc_dir, "plots", "html_template") == "other.html", \
        moved_message("dvc.config.Config(...).load_one")
    assert compat.local_dvc_config(dvc_dir, "core", "autostage") in (True, "true")


MOVED_DVC_INTERNALS = [  # (what moves, how vggbn calls it, the internal the one line must name)
    ("dvc.scm.resolve_rev", lambda root: compat_module().check_dvc_revision("HEAD", str(root)),
     "dvc.scm.resolve_rev"),
    ("dvc.config.Config.load_one", lambda root: compat_module().local_dvc_config(root / ".dvc", "plots", "x"),
     "dvc.config.Config(...).load_one"),
    ("dvc.config.Config.edit", lambda root: compat_module().set_local_dvc_config(root / ".dvc", "plots", "x", "y"),
     "dvc.config.Config(...).edit"),
]


def compat_module():
    from vggbn import compat

    return compat


@pytest.mark.parametrize("internal, call, named", MOVED_DVC_INTERNALS, ids=[m[0] for m in MOVED_DVC_INTERNALS])
def test_each_dvc_internal_that_moves_is_one_line_naming_it(dvc_project, monkeypatch, internal, call, named):
    """pyproject.toml accepts any DVC 3 release after the tested one: each private DVC internal vggbn uses, moved
    in such a release, must stop the command with one line naming it and the versions, not a traceback."""
    import importlib

    root, _ = dvc_project
    module, attribute = internal.rsplit(".", 1)
    try:
        owner = importlib.import_module(module)
    except ImportError:  # a class: dvc.config.Config.load_one
        module, owner_name = module.rsplit(".", 1)
        owner = getattr(importlib.import_module(module), owner_name)
    monkeypatch.delattr(owner, attribute)  # as if DVC had renamed it
    with pytest.raises(compat_module().InternalMoved) as caught:
        call(root)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{named} is not where vggbn uses it with TensorFlow ")
    assert re.search(r"DVC \d+\.\d+\S*, dvclive \S+ installed \(tested with .*DVC 3\.67", message)
