"""Shared fixtures: tiny models (a two-block mini VGG at 32x32) and a chdir'd temporary folder."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow is imported by any test module

import numpy as np
import pytest


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def mini_vgg():
    """A two-block VGG-shaped classifier at 32x32 with random weights: fast, and the same code path as VGG16."""
    from vggbn.numerics.models import build_demo_classifier

    return build_demo_classifier(input_size=32, num_classes=5, filters=(8, 16), dense_units=32, seed=1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


ALL_STAGES = ["plots_template", "demo_data", "demo_model", "model_listing", "pretrained", "listing", "sample", "conv_features",
              "bn_stats", "insert_bn", "finetune", "combine", "transfer_listing", "transfer", "report"]
ALWAYS_CHANGED = ["listing", "model_listing", "transfer_listing"]  # sorted
REPRO_CHANGES = "repro-changes.txt"  # beside the session's `pipeline` project: what its first `dvc repro` changed


class Repro(tuple):
    """(project, stages that ran), and in `log` everything `dvc repro` printed (stdout and stderr, in order)."""
    log: str


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """Repro((project copy on which `dvc repro` has run once with dvc.lock committed, stages that ran)), with
    what it printed in `.log`.

    Shared by every end-to-end test: one demo repro per test session. Tests that change the project work on
    their own copy (`cp -a`), never on this one.
    """
    from project import copy_project, run, stages_ran

    project = copy_project(tmp_path_factory.mktemp("project"))
    log = run(["dvc", "repro"], project, merged=True).stdout
    # What the first run changed of the committed files (dvc.lock, metrics, plot tables): nothing, if they are what
    # this code produces (tests/test_pipeline.py checks it).
    (project.parent / REPRO_CHANGES).write_text(run(["git", "status", "--porcelain"], project).stdout
                                                + run(["git", "diff", "--", "metrics"], project).stdout[:6000])
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "dvc repro", "--allow-empty"], project)  # empty when it reproduces dvc.lock
    result = Repro((project, stages_ran(log)))
    result.log = log
    return result


class SmallDisks:
    """Small tmpfs file systems mounted for a test (and unmounted after it): a full disk, for real."""

    def __init__(self, base):
        self.base, self.mounted = base, []

    def mount(self, size: str, at=None):
        """A tmpfs of `size` (e.g. "256k") at `at` (an empty folder, made if missing) or in the test's folder."""
        import subprocess

        folder = at or self.base / f"disk{len(self.mounted)}"
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs for a full-disk test (needs root with CAP_SYS_ADMIN, as in CI): "
                        f"{done.stderr.strip()}")
        self.mounted.append(folder)
        return folder

    def resize(self, folder, size: str) -> None:
        """Grow (free space on) a mounted tmpfs, keeping what it holds."""
        import subprocess

        subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)

    def unmount_all(self):
        import subprocess

        for folder in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def small_disks(tmp_path):
    disks = SmallDisks(tmp_path)
    yield disks
    disks.unmount_all()
