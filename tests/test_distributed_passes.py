"""The image pass, the conv statistics and fine-tuning under MirroredStrategy (two logical CPU devices) and under
MultiWorkerMirroredStrategy (two worker processes on 127.0.0.1, started by `vggbn.runner.launch`) equal one process's,
and only the chief writes files."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggbn.runner import launch

WORKER = Path(__file__).with_name("as_worker.py")
ROOT = Path(__file__).resolve().parents[1]
CHIEF_WRITES = {"features.h5", "result.npz", "result.json"}
SRUN = ["srun", "--nodes=1", "--ntasks=2", "--overcommit", "--oversubscribe", "--kill-on-bad-exit=1",
        "--job-name=vggbn-resume"]  # two tasks of a one-node Slurm step


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A model file and 23 images of 3 classes (23: no batch size or replica count divides it)."""
    from vggbn.numerics import models

    folder = tmp_path_factory.mktemp("workspace")
    rng = np.random.default_rng(0)
    for i in range(23):
        path = folder / "images" / str(i % 3) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(path)
    model = models.build_demo_classifier(input_size=32, num_classes=3, filters=(8, 16), dense_units=32, seed=1)
    models.save_model(model, folder / "model.keras")
    return folder


# The launcher as on a Unix without prctl and sched_{get,set}affinity (forced on Linux by removing them; the feed's
# fallbacks: tests/test_feed.py).
WITHOUT_LINUX_CALLS = ("import os; del os.sched_getaffinity, os.sched_setaffinity; "
                       "from vggbn.runner import launch; launch._libc = lambda: None; ")


def run(workspace: Path, tmp_path: Path, name: str, strategy: str, logical: int = 1, workers: int = 0,
        epochs: int = 2, prelude: str = "", srun: bool = False):
    """Run the worker script in a copy of the workspace (kept if there is one: a rerun), by the local launcher with
    `workers`, or as the two tasks of a Slurm step with `srun`; (the copy, {worker index: files it wrote})."""
    copy = tmp_path / name
    if not copy.exists():
        shutil.copytree(workspace, copy)
    writes = tmp_path / f"{name}-writes-{epochs}"
    writes.mkdir()
    env = {**os.environ, "VGGBN_STRATEGY": strategy, "WRITES_DIR": str(writes), "PYTHONPATH": str(ROOT),
           "TF_CPP_MIN_LOG_LEVEL": "3", "EPOCHS": str(epochs)}
    env.pop("TF_CONFIG", None)
    command = [sys.executable, str(WORKER), str(copy), str(logical)]
    if srun:
        command = [*SRUN, *command]
    elif workers:
        env[launch.ENV] = f"local:{workers}"
        command = [sys.executable, "-c", prelude + "import sys; from vggbn.runner import launch; "
                   "sys.exit(launch.relaunch(sys.argv[1:]))", *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    run.log = done.stderr
    run.feed_bytes = {int(p.stem.split("-")[2]): json.loads(p.read_text()) for p in writes.glob("feed-bytes-*.json")}
    return copy, {int(p.stem.split("-")[1]): set(json.loads(p.read_text())) for p in writes.glob("writes-*.json")}


@pytest.fixture(scope="module")
def alone(workspace, tmp_path_factory):
    return run(workspace, tmp_path_factory.mktemp("alone"), "alone", "none")[0]


def assert_same_results(one: Path, other: Path, weights_atol: float):
    a, b = np.load(one / "result.npz"), np.load(other / "result.npz")
    assert sorted(a.files) == sorted(b.files)
    np.testing.assert_allclose(b["features"], a["features"], rtol=0, atol=1e-5)
    for key in a.files:
        if key.endswith(("_mean", "_variance")):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-9, err_msg=key)
        elif key.startswith("weight"):
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=weights_atol, err_msg=key)
    one_run, other_run = (json.loads((path / "result.json").read_text()) for path in (one, other))
    for x, y in zip(one_run["history"], other_run["history"], strict=True):
        assert y == pytest.approx(x, abs=1e-5)
    one_lr, other_lr = one_run["transfer"]["start"]["per_lr"], other_run["transfer"]["start"]["per_lr"]
    assert other_lr.keys() == one_lr.keys()
    for lr in one_lr:
        assert other_lr[lr] == pytest.approx(one_lr[lr], abs=1e-5), lr
    return other_run


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_equals_one_process(workspace, alone, tmp_path):
    mirrored, _ = run(workspace, tmp_path, "mirrored", "mirrored", logical=2)
    result = assert_same_results(alone, mirrored, weights_atol=1e-4)
    assert (result["strategy"], result["replicas"]) == ("mirrored", 2)
    assert json.loads((alone / "result.json").read_text())["strategy"] == "default"


@pytest.mark.slow
def test_two_workers_equal_one_process_and_only_the_chief_writes(workspace, alone, tmp_path):
    both, writes = run(workspace, tmp_path, "workers", "auto", workers=2)
    result = assert_same_results(alone, both, weights_atol=1e-4)
    assert (result["strategy"], result["replicas"]) == ("multi_worker", 2)
    assert sorted(writes) == [0, 1]
    assert writes[1] == set(), "a worker other than the chief wrote under the workspace"
    assert CHIEF_WRITES <= writes[0] and any(path.startswith("live/") for path in writes[0])
    # Each worker's training feeds read only its rows of each global batch (of 10 rows: 5 each; the last, of 3:
    # 1 and 2), 11 and 12 of every 23 rows one process reads, never every row.
    alone_read = json.loads((alone.parent / "alone-writes-2" / "feed-bytes-0.json").read_text())
    assert alone_read > 0 and sorted(run.feed_bytes) == [0, 1]
    assert [run.feed_bytes[i] / alone_read for i in (0, 1)] == pytest.approx([11 / 23, 12 / 23])


def processes_of(copy: Path) -> dict[int, bytes]:
    """{pid: its environment} of every process running the worker script on `copy`."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(copy).encode() in (proc / "cmdline").read_bytes().split(b"\0"):
                found[int(proc.name)] = (proc / "environ").read_bytes()
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_two_workers_launched_without_linux_calls_equal_one_process(workspace, alone, tmp_path):
    both, _ = run(workspace, tmp_path, "portable", "auto", workers=2, prelude=WITHOUT_LINUX_CALLS)
    result = assert_same_results(alone, both, weights_atol=1e-4)
    assert (result["strategy"], result["replicas"]) == ("multi_worker", 2)


def paused_after_first_checkpoint(workspace: Path, tmp_path: Path, strategy: str, command, launch_env: str = ""):
    """Start `command(copy)` (the worker script's command line on a copy of the workspace, under `strategy`, 2 epochs,
    pausing once epoch 1's checkpoint is saved) and wait for that checkpoint; (the copy, the running process)."""
    copy = tmp_path / "killed"
    shutil.copytree(workspace, copy)
    (tmp_path / "killed-writes-first").mkdir()
    env = {**os.environ, "VGGBN_STRATEGY": strategy, "WRITES_DIR": str(tmp_path / "killed-writes-first"),
           "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "EPOCHS": "2", "PAUSE_AFTER_EPOCH": "0",
           **({launch.ENV: launch_env} if launch_env else {})}
    env.pop("TF_CONFIG", None)
    process = subprocess.Popen(command(copy), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 600
    while not (copy / "work" / "train" / "epoch.json").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError("the run ended before its first checkpoint, or took 10 minutes")
        time.sleep(0.05)
    return copy, process


@pytest.mark.slow
@pytest.mark.parametrize("how", ["local", "srun"])
def test_two_workers_resume_after_worker_1_is_killed_mid_finetune(workspace, alone, tmp_path, how):
    """Worker 1 killed (SIGKILL) while the chief has saved its first epoch's checkpoint, under the local launcher
    or as a task of a real Slurm step: every worker ends within seconds, an `error:` line names a worker, no
    process is left; the same command then resumes the chief's checkpoint, and the result matches an
    uninterrupted one-process run."""
    if how == "srun":
        from test_soak import slurm_missing

        if slurm_missing():
            pytest.skip(slurm_missing())
    def command(copy):
        worker = [sys.executable, str(WORKER), str(copy), "1"]
        if how == "srun":
            return [*SRUN, *worker]
        return [sys.executable, "-c", "import sys; from vggbn.runner import launch; "
                "sys.exit(launch.relaunch(sys.argv[1:]))", *worker]

    copy, launcher = paused_after_first_checkpoint(workspace, tmp_path, "auto", command,
                                                   launch_env="local:2" if how == "local" else "")
    try:
        worker_1 = next(pid for pid, environ in processes_of(copy).items()
                        if b'"index": 1}' in environ or b"\0SLURM_PROCID=1\0" in environ)
        os.kill(worker_1, signal.SIGKILL)
        killed = time.monotonic()
        _, err = launcher.communicate(timeout=60)
        ended = time.monotonic() - killed
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0 and ended < 15 and not processes_of(copy), (ended, err[-3000:])
    assert not (copy / "result.npz").exists()
    # The line naming the dead worker: the launcher's, or srun's (which then cancels the step: SIGTERM ends the chief)
    assert ("error: worker 1 of 2 was killed by SIGKILL" if how == "local" else "task 1: Killed") in err, err[-3000:]
    print(f"SIGKILL of worker 1 under {how}: every worker ended {ended:.1f} s later")
    both, writes = run(workspace, tmp_path, "killed", "auto", workers=2, epochs=2, srun=how == "srun")
    assert "resuming from the checkpoint after epoch 1" in run.log
    assert len(json.loads((both / "result.json").read_text())["history"]) == 2
    assert_same_results(alone, both, weights_atol=1e-4)
    assert writes[1] == set()


@pytest.mark.slow
def test_mirrored_resumes_after_a_kill_mid_finetune(workspace, alone, tmp_path):
    """Killed (SIGKILL) after its first epoch's checkpoint, a run under MirroredStrategy resumes it in the strategy's
    scope (the checkpoint's values in mirrored variables) and ends where an uninterrupted one-process run ends."""
    copy, worker = paused_after_first_checkpoint(workspace, tmp_path, "mirrored",
                                                 lambda copy: [sys.executable, str(WORKER), str(copy), "2"])
    worker.kill()
    worker.communicate()
    assert not (copy / "result.npz").exists()
    resumed, _ = run(workspace, tmp_path, "killed", "mirrored", logical=2)
    assert "resuming from the checkpoint after epoch 1" in run.log
    result = assert_same_results(alone, resumed, weights_atol=1e-4)
    assert (result["strategy"], result["replicas"]) == ("mirrored", 2) and len(result["history"]) == 2
