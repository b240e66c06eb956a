"""The demo's `dvc repro` from a fresh copy as two workers on 127.0.0.1 (`vggbn launch --workers 2`): the identity
holds, every stage that runs a model says it ran on two replicas, only what one process writes is written, and a
following plain `dvc repro` runs nothing but the listings; features and the fine-tuned dense part equal the
one-process run's."""

import h5py
import keras
import numpy as np
import pytest

from conftest import ALWAYS_CHANGED, ALL_STAGES
from project import ENV, copy_project, metrics, run, stages_ran

MODEL_STAGES = ["demo_model", "conv_features", "bn_stats", "insert_bn", "finetune", "combine", "transfer"]


@pytest.mark.slow
def test_dvc_repro_as_two_workers_then_as_one_process(tmp_path, pipeline):
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
    # equal to the one-process run of the same project (the session's `pipeline`)
    alone = pipeline[0]
    for split in ("train", "valid"):
        with h5py.File(project / f"data/features/{split}.h5") as two, h5py.File(alone / f"data/features/{split}.h5") as one:
            np.testing.assert_allclose(two["features"][:], one["features"][:], rtol=0, atol=1e-5)
    two, one = (keras.saving.load_model(p / "models/dense_bn_finetuned.keras") for p in (project, alone))
    for a, b in zip(one.get_weights(), two.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
    assert metrics(project, "finetune")["valid_loss"] == pytest.approx(metrics(alone, "finetune")["valid_loss"],
                                                                        abs=1e-5)
