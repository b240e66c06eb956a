"""Run the real pipeline in a temporary copy of the project: real git, real DVC, real TensorFlow."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# What a user's shell has: TensorFlow's log level and VGGBN_LOG as the pipeline sets them, not as the tests' own.
ENV = {**{key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "VGGBN_LOG")},
       "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
       "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}


def run(args: list[str], cwd: Path, check: bool = True, env: dict | None = None, timeout: float = 900,
        merged: bool = False) -> subprocess.CompletedProcess:
    """Run a command in a project copy; on failure raise with its output, so a test's error says what DVC said.

    Its stages import that copy's `vggbn`, not the editable install's. `merged`: stderr goes into stdout, in the
    order a terminal would show them.
    """
    result = subprocess.run(args, cwd=cwd, env={**(env or ENV), "PYTHONPATH": str(cwd)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merged else subprocess.PIPE, text=True, timeout=timeout)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{(result.stderr or '')[-4000:]}")
    return result


def copy_project(dest: Path) -> Path:
    """The project's files as git sees them (tracked, and untracked but not ignored) in a fresh git repo."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "project copy"], dest)
    return dest


def copy_of(project: Path, dest: Path) -> Path:
    """A copy of a project folder (its git repo, DVC cache and outputs included) at `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", f"{project}/.", str(dest)], project)
    return dest


def forget_outputs(project: Path, stages: list[str]) -> None:
    """Remove the stages' outputs with every copy DVC could restore (its cache objects, its run cache) and their
    work folders: `dvc repro` runs them again."""
    locked = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for stage in stages:
        for out in locked[stage].get("outs", []):
            path = project / out["path"]
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            md5 = out["md5"]
            (project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).unlink(missing_ok=True)
    shutil.rmtree(project / ".dvc" / "cache" / "runs", ignore_errors=True)
    shutil.rmtree(project / "data" / ".work", ignore_errors=True)


def stages_ran(output: str) -> list[str]:
    """The stages `dvc repro` or `dvc exp run` printed as running, in order."""
    return re.findall(r"Running stage '([\w@.-]+)'", output)


def repro(cwd: Path, *args: str) -> list[str]:
    """`dvc repro`; returns the names of the stages that ran, in order."""
    return stages_ran(run(["dvc", "repro", *args], cwd).stdout)


def metrics(cwd: Path, name: str) -> dict:
    return json.loads((cwd / "metrics" / f"{name}.json").read_text())


def set_param(cwd: Path, key: str, value) -> None:
    """Edit params.yaml the way a user would, keeping its comments: replace one `key: value` line."""
    section, name = key.split(".")
    path = cwd / "params.yaml"
    lines, current = path.read_text().splitlines(), None
    for i, line in enumerate(lines):
        if re.match(r"^\w", line):
            current = line.split(":")[0]
        elif current == section and re.match(rf"^\s+{name}:", line):
            indent = line[:len(line) - len(line.lstrip())]
            lines[i] = f"{indent}{name}: {json.dumps(value)}"
            path.write_text("\n".join(lines) + "\n")
            return
    raise KeyError(key)


def cached_output(cwd: Path, out: str) -> Path:
    """The object in the project's DVC cache that its dvc.lock records for output `out` (DVC 3's layout)."""
    import yaml

    stages = yaml.safe_load((cwd / "dvc.lock").read_text())["stages"]
    md5 = next(o["md5"] for stage in stages.values() for o in stage.get("outs", []) if o["path"] == out)
    return cwd / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
