"""The demo's `dvc repro` from a fresh copy as two workers on 127.0.0.1 (`vggbn launch --workers 2`): the identity
holds, every stage that runs a model says it ran on two replicas, only what one process writes is written, and a
following plain `dvc repro` runs nothing but the listings. That the model stages as two workers equal one process
on the same inputs is `tests/test_slurm.py`'s check (two Slurm tasks, the same code as two local workers), and
`tests/test_distributed_passes.py`'s for the passes themselves under `vggbn launch`."""

import pytest

from conftest import ALL_STAGES, ALWAYS_CHANGED
from project import ENV, copy_project, metrics, run, stages_ran

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
