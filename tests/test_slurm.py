"""The Slurm job script of docs/distributed.md, submitted with `sbatch --wait` to the real one-node Slurm that `.ci/install-slurm`
starts: the demo's model stages run as two `srun` tasks that build their cluster from Slurm's variables, and
their results equal the one-process run's. Skipped, saying why, where no Slurm runs."""

import re
import shutil
import subprocess
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from project import ENV, copy_of, forget_outputs, metrics, run, stages_ran

PAGE = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"
MODEL_STAGES = ["conv_features", "bn_stats", "insert_bn", "finetune", "combine", "transfer"]


def slurm_missing() -> str | None:
    """Why no Slurm job can run here, or None."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return "Slurm is not installed (run .ci/install-slurm as root)"
    try:
        states = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s: slurmctld is not running (run .ci/install-slurm as root)"
    usable = [s for s in states.stdout.split() if s.rstrip("*~#") in ("idle", "mix", "alloc")]
    if states.returncode or not usable:
        return f"no usable Slurm node: {(states.stderr or states.stdout).strip() or 'none'} (run .ci/install-slurm)"
    return None


def documented_job_script() -> str:
    """The job script docs/distributed.md's 'A Slurm job' shows (its indented block starting with #!/bin/bash)."""
    text = PAGE.read_text()
    section = text[text.index("## A Slurm job"):]
    block = re.search(r"\n\n((?:    .*\n)+)", section).group(1)
    script = "\n".join(line[4:] for line in block.splitlines()) + "\n"
    assert script.startswith("#!/bin/bash\n#SBATCH") and "srun" in script, script
    return script


@pytest.mark.slow
def test_the_documented_job_script_under_slurm_equals_one_process(tmp_path, pipeline):
    why = slurm_missing()
    if why:
        pytest.skip(why)
    alone = pipeline[0]
    project = copy_of(alone, tmp_path / "slurm")
    forget_outputs(project, MODEL_STAGES)  # every stage that runs a model runs again, as Slurm tasks
    (tmp_path / "job.sh").write_text(documented_job_script())
    env = {**ENV, "VGGBN_LOG": "info"}  # ports from the job and step ids (slurm.step_ports)
    done = run(["sbatch", "--wait", "--nodes=1", "--ntasks-per-node=2", "--overcommit", "--job-name=vggbn-test",
                f"--output={tmp_path / 'job.log'}", f"--chdir={project}", str(tmp_path / "job.sh")], project,
               env=env, check=False, timeout=3000)
    log = (tmp_path / "job.log").read_text(errors="replace")
    assert done.returncode == 0, done.stdout + done.stderr + log[-6000:]
    assert "Traceback" not in log
    ran = stages_ran(log)
    assert set(MODEL_STAGES) <= set(ran), ran
    for stage in MODEL_STAGES:
        assert (metrics(project, stage)["strategy"], metrics(project, stage)["replicas"]) == ("multi_worker", 2), stage
    for split in ("train", "valid"):
        with h5py.File(project / f"data/features/{split}.h5") as two, \
                h5py.File(alone / f"data/features/{split}.h5") as one:
            np.testing.assert_allclose(two["features"][:], one["features"][:], rtol=0, atol=1e-5)
    assert metrics(project, "insert_bn")["max_abs_diff"] <= 1e-5
    two, one = (keras.saving.load_model(p / "models/dense_bn_finetuned.keras") for p in (project, alone))
    for a, b in zip(one.get_weights(), two.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
    for key in ("train_loss", "valid_loss", "valid_accuracy"):
        assert metrics(project, "finetune")[key] == pytest.approx(metrics(alone, "finetune")[key], abs=1e-5), key
    for variant in ("with_bn", "without_bn"):
        one, two = metrics(alone, "transfer")[variant]["per_lr"], metrics(project, "transfer")[variant]["per_lr"]
        assert two.keys() == one.keys()
        for lr in one:
            assert two[lr]["loss"] == pytest.approx(one[lr]["loss"], abs=1e-4), (variant, lr)
    # only the chief wrote: no second set of files, nothing left in the work folders
    assert not list(project.rglob("*.partial*")) and not list(project.glob("data/.work/**/chunk-*"))
