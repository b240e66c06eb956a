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


def test_the_runner_imports_no_numerics():
    """vggbn/runner is no stage's dependency (it can only accept, refuse or describe): it must not reach code that
    computes a result, or that code would change results unseen by DVC."""
    for path in (ROOT / "vggbn" / "runner").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("vggbn.numerics", "vggbn.pages")), \
                    f"{path.relative_to(ROOT)} imports {node.module}"
