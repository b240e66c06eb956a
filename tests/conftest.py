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
    from vggbn.models import build_demo_classifier

    return build_demo_classifier(input_size=32, num_classes=5, filters=(8, 16), dense_units=32, seed=1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


ALL_STAGES = ["plots_template", "demo_data", "demo_model", "pretrained", "listing", "sample", "conv_features",
              "bn_stats", "insert_bn", "finetune", "combine", "transfer_listing", "transfer", "report"]
ALWAYS_CHANGED = ["listing", "transfer_listing"]


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
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "dvc repro", "--allow-empty"], project)  # empty when it reproduces dvc.lock
    result = Repro((project, stages_ran(log)))
    result.log = log
    return result
