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
