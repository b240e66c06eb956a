"""dvc.yaml stays honest: each stage lists the library modules its script imports (directly or not) and every
path its command names, and reads only params that exist."""

import ast
import re
from pathlib import Path

import pytest
import yaml

from vggbn.params import documented_params

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


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
    needed = closure(ROOT / script) | {script}
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
