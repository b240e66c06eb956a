"""dvc.yaml stays honest: each stage lists the library modules its script imports (directly or not) that can change
its result, and every path its command names, and reads only params that exist."""

import ast
import re
from pathlib import Path

import pytest
import yaml

from vggbn.params import documented_params

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

# Modules that can only accept or refuse a stage's inputs, never change its result. No stage lists them as deps, so
# adding a param or rewording a message reruns nothing (param values are tracked by each stage's `params:`).
# Keep this list short: anything that computes, formats or names an output belongs in the deps.
NOT_DEPS = {
    "vggbn/__init__.py": "the error type and the version string",
    "vggbn/params.py": "the params schema and its validation (every key is set in params.yaml: see below)",
    "vggbn/stage.py": "the stage runner: command line, params loading, logging, one-line errors",
    "vggbn/layer_names.py": "layer names known without TensorFlow, to refuse a bad features.cut early",
    "vggbn/atomic.py": "write under a temporary name, then rename: decides no byte of any output",
    "vggbn/console.py": "what the terminal shows: log level, TensorFlow's start-up chatter filtered, progress bars "
                        "(loops pass their items through unchanged)",
    "vggbn/summary.py": "the one-line summary a stage logs, formatted from metrics already computed",
    "vggbn/launch.py": "where a stage runs (its cluster, which worker writes, the launcher prefix): the environment's "
                       "business, so moving to a cluster reruns nothing",
}


def vggbn_imports(path: Path) -> set[str]:
    """vggbn module files imported anywhere in `path` (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vggbn":
            if node.module == "vggbn":
                found |= {f"vggbn/{a.name}.py" for a in node.names if (ROOT / f"vggbn/{a.name}.py").exists()}
            else:
                found.add(f"vggbn/{node.module.split('.', 1)[1]}.py")
            found.add("vggbn/__init__.py")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vggbn."):
                    found |= {f"vggbn/{alias.name.split('.', 1)[1]}.py", "vggbn/__init__.py"}
    return found


def closure(script: Path) -> set[str]:
    todo, seen = [script], set()
    while todo:
        for module in vggbn_imports(todo.pop()) - seen:
            seen.add(module)
            todo.append(ROOT / module)
    return seen


def deps_of(stage):
    return {str(d) for d in stage.get("deps", [])}


def outs_of(stage):
    paths = set()
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            paths |= set(entry) if isinstance(entry, dict) else {entry}
    return paths


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_every_library_module_it_imports(name):
    stage = STAGES[name]
    script = "stages/{}.py".format(re.search(r"python -m stages\.(\w+)", stage["cmd"]).group(1))
    needed = (closure(ROOT / script) - set(NOT_DEPS)) | {script}
    missing = needed - deps_of(stage)
    assert not missing, f"stage {name} imports {sorted(missing)} but does not list them in its deps"
    extra = {d for d in deps_of(stage) if d.startswith("vggbn/")} - needed
    assert not extra, f"stage {name} lists {sorted(extra)} that it never imports: a needless rerun"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_path_in_the_command_is_declared(name):
    stage = STAGES[name]
    args = stage["cmd"].split()
    paths = [a for a in args[3:] if not a.startswith("--") and "/" in a]  # option values that are paths
    assert args[:2] == ["python", "-m"], f"stage {name}: run stages as `python -m stages.<name>`"
    declared = deps_of(stage) | outs_of(stage)
    undeclared = [p for p in paths if p not in declared and not p.startswith("data/.work/")]
    assert not undeclared, f"stage {name} passes {undeclared} but declares them neither as deps nor outs"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_declared_params_exist(name):
    known = {key for key, _, _ in documented_params()}
    sections = {key.split(".")[0] for key in known}
    for param in STAGES[name].get("params", []):
        assert param in known or param in sections, f"stage {name} declares unknown param {param}"


def test_params_yaml_sets_every_param():
    """Defaults in params.py never decide a result: DVC tracks the values params.yaml holds, and params.py is no dep."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    missing = [key for key, _, _ in documented_params() if key.split(".")[1] not in (raw.get(key.split(".")[0]) or {})]
    assert not missing, f"params.yaml does not set {missing}"


def readme_metric_keys() -> dict[str, set[str]]:
    """metrics file -> the keys the README's Metrics table names for it (`{a,b}_{c,d}` expanded, in file names
    too)."""
    import itertools

    def expand(token: str) -> list[str]:
        return ["".join(p) for p in itertools.product(*(part.split(",") for part in re.split(r"[{}]", token) if part))]

    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Metrics"):].split("\n\n")[1]
    named, current = {}, []
    for row in table.splitlines()[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        current = expand(cells[0].strip("`")) if cells[0] else current
        for token in re.findall(r"`([^`]+)`", cells[1]):
            for path in current:
                named.setdefault(path, set()).update(expand(token))
    return named


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "metrics").glob("*.json")))
def test_readme_names_every_metric_the_code_writes(path):
    import json

    named = readme_metric_keys().get(path, set())
    unnamed = []

    def walk(node, parent):
        for key, value in node.items():
            dynamic = (path.endswith("bn_stats.json") and parent is None) or parent == "per_lr"  # layer names, lrs
            if not dynamic and key not in named:
                unnamed.append(key)
            if isinstance(value, dict):
                walk(value, key)

    walk(json.loads((ROOT / path).read_text()), None)
    assert not unnamed, f"README's Metrics table does not name {path}'s keys {unnamed}"
