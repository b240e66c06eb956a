"""Training that lasts: two real workers train on a feature file for minutes (thousands of collectives), under the
local launcher and as two tasks of a real Slurm job step, and neither their threads nor their memory nor their open
files grow. TensorFlow's per-collective timeout once grew ~700 threads a second a worker, until both aborted
30 s in, and its record of each collective's instance key 0.8 MB/s; a hung or killed worker must end every worker
within the watchdog's timeout."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from vggbn.runner import launch

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "soak_worker.py"
MAX_THREADS = 200
MAX_RSS_GROWTH = 0.03  # after the first epoch: flat within 2 MB of 723 for 4 minutes; TensorFlow's record of every
# collective instance key (compat.one_instance_key_per_collective) grew it 0.8 MB/s, 7% a minute
MAX_NEW_FDS = 16


def feature_file(path: Path, rows: int = 2048, width: int = 32) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as file:
        file.create_dataset("features", data=rng.normal(size=(rows, width)).astype(np.float32), chunks=(64, width))
        file.create_dataset("labels", data=rng.integers(0, 10, rows).astype(np.int32))
    return path


def environment(**extra) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TF_CONFIG", "VGGBN_", "SLURM_"))}
    return {**env, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def check_bounded(out: Path, seconds: float) -> list[dict]:
    """Each worker's record, checked: it trained at least `seconds` and thousands of steps, and its threads, memory
    after the first epoch and open files stayed bounded."""
    records = [json.loads((out / f"soak-{index}.json").read_text()) for index in (0, 1)]
    for index, record in enumerate(records):
        samples = record["samples"]
        assert record["seconds"] >= seconds and record["steps"] >= 1000, record["steps"]
        assert max(s["threads"] for s in samples) <= MAX_THREADS, (index, [s["threads"] for s in samples])
        after_first = [s for s in samples if s["epoch"] >= 1]
        assert len(after_first) >= 10, "too few samples after the first epoch"
        rss, fds = after_first[0]["rss_kib"], after_first[0]["fds"]
        assert max(s["rss_kib"] for s in after_first) <= rss * (1 + MAX_RSS_GROWTH), (index, [s["rss_kib"] for s in samples])
        assert max(s["fds"] for s in after_first) <= fds + MAX_NEW_FDS, (index, [s["fds"] for s in samples])
    assert records[0]["steps"] == records[1]["steps"]
    return records


@pytest.mark.slow
def test_two_local_workers_train_for_two_minutes_with_bounded_threads_memory_and_files(tmp_path, monkeypatch):
    features = feature_file(tmp_path / "features.h5")
    for key, value in environment(SOAK_SECONDS="120").items():
        monkeypatch.setenv(key, value)
    for key in [key for key in os.environ if key.startswith(("TF_CONFIG", "VGGBN_", "SLURM_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    start = time.monotonic()
    assert launch.start_local_workers([sys.executable, str(WORKER), str(features), str(tmp_path)], 2) == 0
    assert time.monotonic() - start < 300
    records = check_bounded(tmp_path, 120)
    print("soak, 2 local workers:", {"steps": records[0]["steps"], "threads_max": [max(
        s["threads"] for s in r["samples"]) for r in records]})


def slurm_missing() -> str | None:
    """Why no Slurm job can run here, or None; waits up to a minute for the node to finish completing a job."""
    from test_slurm import slurm_missing as why

    deadline = time.monotonic() + 60
    while shutil.which("sinfo") and time.monotonic() < deadline:
        states = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=30)
        if not any(state.startswith("comp") for state in states.stdout.split()):
            break
        time.sleep(1)
    return why()


def srun(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(["srun", "--nodes=1", "--ntasks=2", "--overcommit", "--oversubscribe",
                             "--job-name=vggbn-soak", *args],
                            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


TWO_STEPS = """#!/bin/bash
srun --overlap --ntasks=2 {python} {worker} {features} {out} &
SOAK_SECONDS=5 srun --overlap --ntasks=2 {python} {worker} {features} {out}/beside &
wait -n && wait -n
"""


@pytest.mark.slow
def test_two_slurm_tasks_train_for_a_minute_bounded_beside_a_second_step_of_the_job(tmp_path):
    """One job, two `srun` steps at once on the one node (as `dvc queue start -j 2` runs them): their ports, derived
    from the job and step ids, differ; one step is the soak (a minute), the other a short training."""
    why = slurm_missing()
    if why:
        pytest.skip(why)
    features = feature_file(tmp_path / "features.h5")
    (tmp_path / "beside").mkdir()
    (tmp_path / "job.sh").write_text(TWO_STEPS.format(python=sys.executable, worker=WORKER, features=features,
                                                      out=tmp_path))
    done = subprocess.run(["sbatch", "--wait", "--nodes=1", "--ntasks=2", "--overcommit", "--oversubscribe",
                           "--job-name=vggbn-soak", f"--output={tmp_path / 'job.log'}", f"--chdir={tmp_path}",
                           str(tmp_path / "job.sh")], env=environment(SOAK_SECONDS="60"), capture_output=True,
                          text=True, timeout=400)
    log = (tmp_path / "job.log").read_text(errors="replace") if (tmp_path / "job.log").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log[-3000:]
    soak, beside = tmp_path / "soak-0.json", tmp_path / "beside" / "soak-0.json"
    assert beside.stat().st_mtime < soak.stat().st_mtime - 20, "the second step waited for the first"
    check_bounded(tmp_path, 60)


@pytest.mark.slow
@pytest.mark.parametrize("fault, how", [
    ("SIGSTOP", "local"), ("hang", "local"),  # SIGKILL under the local launcher: test_distributed_passes.py
    ("SIGKILL", "srun --kill-on-bad-exit=1"), ("SIGSTOP", "srun"), ("hang", "srun")])
def test_a_killed_stopped_or_hung_worker_ends_every_worker_within_the_timeout(tmp_path, fault, how):
    """Worker 1 killed, stopped (TensorFlow's coordination service sees its heartbeats stop) or hung while alive
    (heartbeats go on: the watchdog's timeout, 30 s here) mid-training: every worker ends within the timeout plus
    a margin, no process is left (under plain srun too: the ending worker cancels the step), and a line names the
    worker and why: vggbn's `error: worker ...`, or srun's `task 1: Killed` when it cancels the step itself."""
    if how != "local" and slurm_missing():
        pytest.skip(slurm_missing())
    features = feature_file(tmp_path / "features.h5")
    env = environment(SOAK_SECONDS="600", VGGBN_COLLECTIVE_TIMEOUT="30", **({"SOAK_HANG": "1"} if fault == "hang"
                                                                           else {}))
    command = [sys.executable, str(WORKER), str(features), str(tmp_path)]
    if how == "local":
        process = subprocess.Popen([sys.executable, "-c", "import sys; from vggbn.runner import launch; "
                                    "sys.exit(launch.start_local_workers(sys.argv[1:], 2))", *command], env=env,
                                   cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
    else:
        process = srun([*how.split()[1:], *command], env, tmp_path)
    try:
        worker = None
        deadline = time.monotonic() + 240
        while worker is None:  # worker 1, once its strategy is up
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
            worker = worker_pid(tmp_path, 1)
            time.sleep(0.5)
        time.sleep(5)  # training
        if fault != "hang":
            os.kill(worker, getattr(signal, fault))
        hit = time.monotonic()
        output, _ = process.communicate(timeout=30 + 60)
        ended = time.monotonic() - hit
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0 and ended < 30 + 30, (ended, output[-3000:])
    assert not soak_pids(tmp_path), "a worker was left running"
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert all(line.startswith("error: worker ") for line in errors), output[-3000:]
    # Under --kill-on-bad-exit srun names the killed task and cancels the step: its SIGTERM may end the chief before
    # the chief notices the death itself, so srun's line is the one line then (vggbn's own may come first or not)
    naming = errors + ([line for line in output.splitlines() if re.fullmatch(r"srun: error: \S+: task 1: Killed", line)]
                       if "--kill-on-bad-exit=1" in how else [])
    assert naming, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    print(f"{fault} of worker 1 under {how}: every worker ended {ended:.1f} s later; {naming[0]}")


def soak_pids(out: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            words = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and str(WORKER).encode() in words and str(out).encode() in words:
            pids.append(int(proc.name))
    return pids


def worker_pid(out: Path, index: int) -> int | None:
    """The pid of the soak worker of `index` writing under `out`, once it has started training."""
    for pid in soak_pids(out):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            threads = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                               if line.startswith("Threads:")).split()[1])
        except (OSError, StopIteration):
            continue
        rank = [e for e in environ if e.startswith((b"SLURM_PROCID=", b"TF_CONFIG="))]
        mine = any(e == f"SLURM_PROCID={index}".encode() or f'"index": {index}}}'.encode() in e for e in rank)
        if mine and threads > 20:
            return pid
    return None
