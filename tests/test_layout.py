"""The layout a newcomer relies on: each stage of dvc.yaml is stages/<its name>.py with one `run(paths, params)`
entry, a stage module imports nothing heavy until it runs, and the library's four parts hold what their names say."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
SCRIPTS = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")


def test_stages_folder_names_exactly_the_stages_of_dvc_yaml():
    assert SCRIPTS == sorted(STAGES)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_runs_the_script_of_its_name_whose_entry_is_run(name):
    assert STAGES[name]["cmd"].split()[:3] == ["python", "-m", f"stages.{name}"]
    tree = ast.parse((ROOT / "stages" / f"{name}.py").read_text())
    entries = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "run"]
    assert entries, f"stages/{name}.py has no run(paths, params)"
    assert [a.arg for a in entries[0].args.args][:2] == ["paths", "params"]
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr == "main"
             and isinstance(node.func.value, ast.Name) and node.func.value.id == "stage"]
    assert len(calls) == 1, f"stages/{name}.py must hand `run` to stage.main once"


def test_no_stage_module_imports_tensorflow_until_it_runs():
    """Params are validated and arguments parsed before TensorFlow's ~4-10 s import, which the runner also quiets."""
    code = ("import sys, importlib\n"
            f"for name in {SCRIPTS!r}:\n"
            "    importlib.import_module('stages.' + name)\n"
            "heavy = sorted(m for m in ('tensorflow', 'keras', 'h5py') if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_no_run_named_function_in_the_library():
    """`run` names a stage's entry; the library's functions say what they do."""
    found = [f"{path.relative_to(ROOT)}:{node.name}" for path in (ROOT / "vggbn").rglob("*.py")
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.FunctionDef) and (node.name == "run" or node.name.startswith("run_"))]
    assert not found, found


# The layers, each a list of module prefixes, and which layers each may import (itself always). Nothing below the
# runner imports it back, so the runner's exemption from DVC deps is safe: code that decides a result never reaches
# it. The top (stage scripts, the CLI and its commands, the public API) may import anything.
LAYERS = {
    "runner": ["vggbn.runner"],
    "pages": ["vggbn.pages"],
    "numerics": ["vggbn.numerics"],
    "storage": ["vggbn.storage"],
    "cluster": ["vggbn.cluster"],
    "base": ["vggbn.console", "vggbn.choices", "vggbn.compat"],
}
MAY_IMPORT = {
    "runner": {"storage", "cluster", "base"},
    "pages": {"storage", "cluster", "base"},
    "numerics": {"storage", "cluster", "base"},
    "storage": {"cluster", "base"},
    "cluster": {"base"},
    "base": set(),
}
# Modules exempt from DVC deps below the runner (tests/test_dvc_yaml.py's NEVER_DEPS): they may import nothing of
# the library but each other and the error type, so they cannot reach code that decides a result.
DESCRIBE_ONLY = {"vggbn.console", "vggbn.cluster.watchdog", "vggbn.cluster.devices"}


def layer_of(module: str) -> str | None:
    for layer, prefixes in LAYERS.items():
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return layer
    return None


def imported_modules(path: Path) -> set[str]:
    """Every vggbn module `path` imports, anywhere in it (inside functions too), `from vggbn.x import y` as
    vggbn.x.y where y is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vggbn":
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                is_module = (ROOT / (dotted.replace(".", "/") + ".py")).exists() or \
                    (ROOT / dotted.replace(".", "/")).is_dir()
                found.add(dotted if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "vggbn"}
    return found


def library_modules():
    for path in sorted((ROOT / "vggbn").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def test_every_library_module_is_in_a_layer_or_the_top():
    top = {"vggbn", "vggbn.api", "vggbn.cli"}
    unplaced = [name for name, _ in library_modules() if layer_of(name) is None and name not in top
                and not name.startswith("vggbn.commands")]
    assert not unplaced, f"modules in no layer of tests/test_layout.py's LAYERS: {unplaced}"


def test_each_layer_imports_only_itself_and_the_layers_below_it():
    """The import contract: a part of the library imports only what MAY_IMPORT allows; in particular nothing
    below the runner imports it back, and the runner reaches no numerics or pages."""
    broken = []
    for name, path in library_modules():
        layer = layer_of(name)
        if layer is None:
            continue
        for module in imported_modules(path):
            target = layer_of(module)
            if module != "vggbn" and target != layer and target not in MAY_IMPORT[layer]:
                broken.append(f"{path.relative_to(ROOT)} ({layer}) imports {module} ({target or 'the top'})")
    assert not broken, "\n".join(broken)


def test_describe_only_modules_reach_nothing_that_decides_a_result():
    for name, path in library_modules():
        if name in DESCRIBE_ONLY:
            reached = imported_modules(path) - DESCRIBE_ONLY - {"vggbn"}
            assert not reached, f"{path.relative_to(ROOT)} is no stage's dependency but imports {sorted(reached)}"


def test_the_exemptions_from_dvc_deps_are_the_runner_and_the_describe_only_modules():
    from test_dvc_yaml import NEVER_DEPS

    assert set(NEVER_DEPS) == {"vggbn/runner/", "vggbn/__init__.py"} | {
        name.replace(".", "/") + ".py" for name in DESCRIBE_ONLY}


def test_the_contract_catches_an_import_back_into_the_runner(tmp_path, monkeypatch):
    """The contract can fail: a storage module that imports the runner is named."""
    fake = tmp_path / "vggbn" / "storage"
    fake.mkdir(parents=True)
    (fake / "leak.py").write_text("from vggbn.runner import params\n")
    assert "vggbn.runner.params" in imported_modules(fake / "leak.py")
    assert layer_of("vggbn.runner.params") not in MAY_IMPORT[layer_of("vggbn.storage.leak")]


# The size rule: no library function takes more than 7 parameters or spans more than 80 lines (a value object or a
# second function is missing). What is still over it is named here, to shrink to nothing; a new entry is refused.
MAX_PARAMETERS, MAX_LINES = 7, 80
STILL_OVER: set[str] = set()


def oversized_functions() -> dict[str, str]:
    found = {}
    for _, path in library_modules():
        tree = ast.parse(path.read_text())
        owners = {child: f"{node.name}." for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                  for child in node.body}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args
            count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) + bool(args.vararg) + \
                bool(args.kwarg)
            count -= bool(args.args) and args.args[0].arg in ("self", "cls") and node in owners
            lines = node.end_lineno - node.lineno + 1
            if count > MAX_PARAMETERS or lines > MAX_LINES:
                name = f"{path.relative_to(ROOT).as_posix()}:{owners.get(node, '')}{node.name}"
                found[name] = f"{count} parameters, {lines} lines"
    return found


def test_no_library_function_takes_more_than_7_parameters_or_80_lines():
    found = oversized_functions()
    new = {name: size for name, size in found.items() if name not in STILL_OVER}
    assert not new, f"over {MAX_PARAMETERS} parameters or {MAX_LINES} lines: {new}"
    fixed = STILL_OVER - set(found)
    assert not fixed, f"now within the rule: remove {sorted(fixed)} from STILL_OVER"
