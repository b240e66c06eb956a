"""The demo's `dvc repro` from a fresh copy as two workers on 127.0.0.1 (`vggbn launch --workers 2`): the identity
holds, every stage that runs a model says it ran on two replicas, only what one process writes is written, and a
following plain `dvc repro` runs nothing but the listings. On the same inputs, conv_features and finetune as two
workers equal one process."""

import shutil

import h5py
import keras
import numpy as np
import pytest

from conftest import ALL_STAGES, ALWAYS_CHANGED
from project import ENV, cached_output, copy_of, copy_project, metrics, run, stages_ran

MODEL_STAGES = ["demo_model", "conv_features", "bn_stats", "insert_bn", "finetune", "combine", "transfer"]


@pytest.mark.slow
def test_dvc_repro_as_two_workers_then_as_one_process(tmp_path):
    project = copy_project(tmp_path / "project")
    log = run(["vggbn", "launch", "--workers", "2", "--", "dvc", "repro"], project, merged=True,
              env={**ENV, "VGGBN_LOG": "info"}, timeout=1800).stdout
    assert stages_ran(log) == ALL_STAGES
    assert metrics(project, "insert_bn")["max_abs_diff"] <= 1e-5
    for stage in MODEL_STAGES:
        assert (metrics(project, stage)["strategy"], metrics(project, stage)["replicas"]) == ("multi_worker", 2), stage
    assert "(2 replicas, multi_worker)" in log and "Traceback" not in log
    # the other worker wrote nothing of its own: no second set of files, nothing left in the work folders
    assert not list(project.rglob("*.partial*")) and not list(project.glob("data/.work/**/chunk-*"))
    assert stages_ran(run(["dvc", "repro"], project).stdout) == ALWAYS_CHANGED


@pytest.mark.slow
def test_conv_features_and_finetune_as_two_workers_equal_one_process(tmp_path, pipeline):
    """On the inputs of the session's one-process run, nothing reused or resumed: the same features within 1e-5, the
    same fine-tuned dense part within 1e-4 (Adam turns float rounding into a fraction of a step), the same curves."""
    alone = pipeline[0]
    project = copy_of(alone, tmp_path / "two")
    for split in ("train", "valid"):
        cached_output(project, f"data/features/{split}.h5").unlink()  # no previous rows to reuse
    shutil.rmtree(project / "data/.work")
    launch = ["vggbn", "launch", "--workers", "2", "--", "dvc", "repro", "--force", "--single-item"]
    run([*launch, "conv_features"], project)
    assert metrics(project, "conv_features")["train_computed"] == metrics(alone, "conv_features")["train_computed"] > 0
    for split in ("train", "valid"):
        with h5py.File(project / f"data/features/{split}.h5") as two, \
                h5py.File(alone / f"data/features/{split}.h5") as one:
            np.testing.assert_allclose(two["features"][:], one["features"][:], rtol=0, atol=1e-5)
    run([*launch, "finetune"], project)
    two, one = (keras.saving.load_model(p / "models/dense_bn_finetuned.keras") for p in (project, alone))
    for a, b in zip(one.get_weights(), two.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
    for key in ("train_loss", "valid_loss", "valid_accuracy"):
        assert metrics(project, "finetune")[key] == pytest.approx(metrics(alone, "finetune")[key], abs=1e-5), key
    assert metrics(project, "finetune")["replicas"] == 2
