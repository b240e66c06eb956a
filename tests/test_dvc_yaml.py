"""dvc.yaml stays honest: each stage lists the library modules its script imports (directly or not) that can change
its result, and every path its command names, and reads only params that exist."""

import ast
import re
from pathlib import Path

import pytest
import yaml

from vggbn.runner.params import documented_params

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

# The runner (vggbn/runner/) can only accept, refuse or describe a stage's inputs (params schema, command line,
# summaries, how a stage is launched), never change a result: no stage lists it, so adding a param, rewording a
# message or moving to a cluster reruns nothing. Below it, three modules only describe or guard a run and are no
# dependency either: what a run shows (vggbn/console.py), the watchdog that ends a worker stuck on a dead peer and the
# device probe (vggbn/cluster/watchdog.py, devices.py). The package's own __init__ holds only the error type, and
# each part's __init__ only its docstring (checked below). Everything else a stage imports is in its deps:
# vggbn/cluster/distribute.py and the environment it reads decide which rows each worker reads.
NEVER_DEPS = ("vggbn/runner/", "vggbn/__init__.py", "vggbn/console.py", "vggbn/cluster/watchdog.py",
              "vggbn/cluster/devices.py")


def never_a_dep(module: str) -> bool:
    return module.startswith(NEVER_DEPS) or (module.startswith("vggbn/") and module.endswith("/__init__.py"))


def module_file(dotted: str) -> str | None:
    """`vggbn.storage.features` -> `vggbn/storage/features.py` (or a package's __init__.py); None if no such file."""
    base = dotted.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if (ROOT / candidate).exists():
            return candidate
    return None


def with_packages(module: str) -> set[str]:
    """The module and the __init__.py of every package above it, which Python imports first."""
    parts = module.split("/")
    return {module} | {"/".join(parts[:i]) + "/__init__.py" for i in range(1, len(parts) - 1)}


def vggbn_imports(path: Path) -> set[str]:
    """vggbn module files imported anywhere in `path` (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        dotted = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vggbn":
            dotted = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            dotted = [a.name for a in node.names if a.name.split(".")[0] == "vggbn"]
        for name in dotted:
            module = module_file(name)
            if module:
                found |= with_packages(module)
    return found


def closure(script: Path) -> set[str]:
    todo, seen = [script], set()
    while todo:
        for module in vggbn_imports(todo.pop()) - seen:
            seen.add(module)
            todo.append(ROOT / module)
    return seen


def test_package_inits_hold_only_a_docstring():
    """They are no stage's dependency, so they must not hold anything that could change a result."""
    for init in sorted((ROOT / "vggbn").glob("*/__init__.py")):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), \
            f"{init.relative_to(ROOT)} holds code: only a docstring, since no stage lists it as a dependency"


# Files shipped with the package that a module reads, so that a stage importing the module depends on them too.
DATA_FILES = {"vggbn/storage/digits.py": "vggbn/storage/digits/digits.csv.gz",
              "vggbn/storage/imagenet.py": "vggbn/storage/imagenet_classes.txt"}


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
    needed = {m for m in closure(ROOT / script) if not never_a_dep(m)} | {script}
    needed |= {data for module, data in DATA_FILES.items() if module in needed}
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
    """metrics file -> the keys docs/params.md's Metrics table names for it (`{a,b}_{c,d}` expanded, in file names
    too)."""
    import itertools

    def expand(token: str) -> list[str]:
        return ["".join(p) for p in itertools.product(*(part.split(",") for part in re.split(r"[{}]", token) if part))]

    text = (ROOT / "docs" / "params.md").read_text()
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
def test_docs_name_every_metric_the_code_writes(path):
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
    assert not unnamed, f"docs/params.md's Metrics table does not name {path}'s keys {unnamed}"
