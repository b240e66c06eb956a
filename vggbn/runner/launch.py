"""Where a stage runs: the cluster the environment describes (which process is the chief, the one that writes), and
the launcher prefix `VGGBN_LAUNCH` names, which runs a stage as every worker of a multi-worker job.

`dvc repro` runs one command per stage, while under `MultiWorkerMirroredStrategy` every worker must run that same
command (SPMD). A stage that runs a model, started with `VGGBN_LAUNCH` set, re-executes itself:

- `VGGBN_LAUNCH=local:N` (or `local:N:C`): as N processes on this machine, each with its `TF_CONFIG` on 127.0.0.1
  (free ports), like `torchrun --nproc_per_node`; with C, process i is pinned to cores i*C .. i*C+C-1;
- any other value is a command prefix, e.g. `VGGBN_LAUNCH="srun --kill-on-bad-exit=1"` inside a Slurm allocation:
  `srun` starts the tasks, and TensorFlow's `SlurmClusterResolver` finds the cluster from Slurm's variables.

The launched processes carry `VGGBN_LAUNCHED=1`, so they run the stage instead of launching again. The local
launcher returns the first failing worker's status after stopping the others (a stage never hangs on a dead
worker), or 0 when all succeed; the workers other than the chief write their output to a log file in the system's
temporary folder (never under the workspace), whose last lines are shown if that worker fails.

Nothing here changes a stage's result (where it runs is the environment's business), so this module is no
stage's DVC dependency.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Sequence

from vggbn import VggbnError

ENV = "VGGBN_LAUNCH"
LAUNCHED = "VGGBN_LAUNCHED"
LOG_TAIL_LINES = 20


class LaunchError(VggbnError):
    pass


STRATEGY_ENV = "VGGBN_STRATEGY"
STRATEGIES = ("auto", "none", "mirrored", "multi_worker")


class DistributeError(VggbnError):
    pass


class Cluster(NamedTuple):
    workers: int  # processes taking part (1: no cluster)
    index: int  # this process' rank among them (the chief is 0)
    source: str  # "TF_CONFIG", "slurm" or "" (none)


def strategy_choice() -> str:
    """`VGGBN_STRATEGY`, checked: auto (unset), none, mirrored or multi_worker."""
    choice = os.environ.get(STRATEGY_ENV, "auto").strip().lower() or "auto"
    if choice not in STRATEGIES:
        raise DistributeError(f"{STRATEGY_ENV}={os.environ[STRATEGY_ENV]!r}: expected one of {', '.join(STRATEGIES)}")
    return choice


def cluster() -> Cluster:
    """The cluster the environment describes: TF_CONFIG's, else a Slurm job step's of several tasks, else none
    (also with VGGBN_STRATEGY=none)."""
    if strategy_choice() == "none":
        return Cluster(1, 0, "")
    text = os.environ.get("TF_CONFIG", "").strip()
    if text:
        try:
            config = json.loads(text)
            spec, task = config.get("cluster", {}), config["task"]
            workers = sum(len(spec.get(kind, [])) for kind in ("chief", "worker"))
            index = int(task["index"]) + (len(spec.get("chief", [])) if task["type"] == "worker" else 0)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise DistributeError(f"TF_CONFIG: not a cluster description ({type(error).__name__}: {error}); "
                                  'expected {"cluster": {"worker": [...]}, "task": {"type": "worker", "index": 0}}')
        if task["type"] not in ("chief", "worker"):
            raise DistributeError(f"TF_CONFIG: task type {task['type']!r} does not run stages: expected chief or "
                                  "worker")
        return Cluster(max(workers, 1), index, "TF_CONFIG")
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS")
    if os.environ.get("SLURM_STEP_ID") is not None and tasks and tasks.isdigit() and int(tasks) > 1:
        return Cluster(int(tasks), int(os.environ.get("SLURM_PROCID", "0")), "slurm")
    return Cluster(1, 0, "")


def is_chief() -> bool:
    """Whether this process writes the stage's files: always, outside a cluster. Deciding who writes decides no
    byte of what is written."""
    return cluster().index == 0


def multi_worker() -> bool:
    return cluster().workers > 1


class Local(NamedTuple):
    workers: int
    cores_per_worker: int | None


def parse(value: str) -> Local | list[str]:
    """`VGGBN_LAUNCH`'s value: a local launch, or the words of a command prefix."""
    if value.startswith("local:"):
        parts = value.split(":")[1:]
        try:
            numbers = [int(part) for part in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (1, 2) or min(numbers) < 1:
            raise LaunchError(f"{ENV}={value!r}: expected local:N or local:N:C (N workers, C cores each, both >= 1)")
        return Local(numbers[0], numbers[1] if len(numbers) == 2 else None)
    words = shlex.split(value)
    if not words:
        raise LaunchError(f"{ENV} is set but empty: expected local:N, local:N:C or a command prefix such as srun")
    return words


def wanted() -> str | None:
    """The launch this process should do before running its stage, or None (none asked, or already launched)."""
    value = os.environ.get(ENV, "").strip()
    return value if value and not os.environ.get(LAUNCHED) else None


def relaunch(argv: Sequence[str]) -> int:
    """Run `argv` (this stage's own command line) as the launch `VGGBN_LAUNCH` names; the exit status."""
    how = parse(wanted())
    if isinstance(how, Local):
        return start_local_workers(argv, how.workers, how.cores_per_worker)
    return subprocess.call([*how, *argv], env={**os.environ, LAUNCHED: "1"})


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_environments(workers: int, cores_per_worker: int | None) -> list[dict]:
    """Each local worker's additional environment: its TF_CONFIG, and its thread counts when pinned."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(workers)]}
    environments = []
    for index in range(workers):
        env = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               LAUNCHED: "1"}
        if cores_per_worker:
            threads = str(cores_per_worker)
            env.update(TF_NUM_INTRAOP_THREADS=threads, TF_NUM_INTEROP_THREADS=threads, OMP_NUM_THREADS=threads)
        environments.append(env)
    return environments


def _child_setup(cores: list[int] | None):
    def setup():
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a killed launcher takes its workers along
        if cores:
            os.sched_setaffinity(0, cores)
    return setup


def start_local_workers(argv: Sequence[str], workers: int, cores_per_worker: int | None = None) -> int:
    available = sorted(os.sched_getaffinity(0))
    if cores_per_worker and workers * cores_per_worker > len(available):
        raise LaunchError(f"{ENV}: {workers} workers x {cores_per_worker} cores need {workers * cores_per_worker} "
                          f"cores; this process may use {len(available)}")
    logs, processes = [], []
    try:
        for index, extra in enumerate(worker_environments(workers, cores_per_worker)):
            cores = available[index * cores_per_worker:(index + 1) * cores_per_worker] if cores_per_worker else None
            output = None
            if index:
                output = tempfile.NamedTemporaryFile("w+b", prefix=f"vggbn-worker{index}-", suffix=".log",
                                                     delete=False)
                logs.append(Path(output.name))
            processes.append(subprocess.Popen(list(argv), env={**os.environ, **extra}, stdout=output,
                                              stderr=subprocess.STDOUT if output else None,
                                              preexec_fn=_child_setup(cores)))
            if output:
                output.close()
        return _wait(processes, logs)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.unlink(missing_ok=True)


def _wait(processes: list[subprocess.Popen], logs: list[Path]) -> int:
    """0 when every worker succeeds; else the first failure's status, once the others are stopped."""
    while True:
        statuses = [process.poll() for process in processes]
        failed = [(index, status) for index, status in enumerate(statuses) if status not in (None, 0)]
        if failed:
            index, status = failed[0]
            for process in processes:
                if process.poll() is None:
                    process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
            if index:
                tail = logs[index - 1].read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                print(f"worker {index} of {len(processes)} failed (exit status {status}); its last lines:",
                      *tail, sep="\n", file=sys.stderr)
            return status if status > 0 else 128 - status
        if all(status == 0 for status in statuses):
            return 0
        time.sleep(0.1)
