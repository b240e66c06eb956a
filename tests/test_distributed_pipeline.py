"""`dvc repro` as two workers on 127.0.0.1 (`vggbn launch --workers 2 -- dvc repro`): the training stages and
what follows them run again as two workers, each says it ran on two replicas, only what one process writes is
written, and a following plain `dvc repro` runs nothing but the listings. That every model stage as two workers
equals one process on the same inputs is `tests/test_slurm.py`'s check (two Slurm tasks, the same code as two local
workers), and `tests/test_distributed_passes.py`'s for the passes themselves under `vggbn launch`."""

import pytest

from conftest import ALWAYS_CHANGED
from project import ENV, copy_of, forget_outputs, metrics, run, stages_ran

TRAININGS = ["finetune", "transfer"]  # the Trainer's two users in the pipeline besides demo_model


@pytest.mark.slow
def test_dvc_repro_as_two_workers_then_as_one_process(tmp_path, pipeline):
    project = copy_of(pipeline[0], tmp_path / "project")
    forget_outputs(project, TRAININGS)
    log = run(["vggbn", "launch", "--workers", "2", "--", "dvc", "repro"], project, merged=True,
              env={**ENV, "VGGBN_LOG": "info"}, timeout=1800).stdout
    ran = stages_ran(log)
    assert {*TRAININGS, "combine", "report"} <= set(ran) and "conv_features" not in ran, ran
    for stage in (*TRAININGS, "combine"):
        assert (metrics(project, stage)["strategy"], metrics(project, stage)["replicas"]) == ("multi_worker", 2), stage
        assert metrics(project, stage)["device"] == "cpu", stage  # what it ran on, recorded
    assert metrics(project, "finetune")["valid_accuracy"] >= metrics(pipeline[0], "finetune")["valid_accuracy"] - 0.02
    assert "(2 replicas, multi_worker)" in log and "Traceback" not in log
    # the other worker wrote nothing of its own: no second set of files, nothing left in the work folders
    assert not list(project.rglob("*.partial*")) and not list(project.glob("data/.work/**/chunk-*"))
    assert sorted(stages_ran(run(["dvc", "repro"], project).stdout)) == ALWAYS_CHANGED
