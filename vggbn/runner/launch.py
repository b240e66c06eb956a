"""How a stage is launched: the launcher `VGGBN_LAUNCH` names, which runs a stage as every worker of a multi-worker
job (who each worker is, and the cluster it belongs to, is `vggbn.cluster`'s business).

`dvc repro` runs one command per stage, while under `MultiWorkerMirroredStrategy` every worker must run that same
command (SPMD). A stage that runs a model, started with `VGGBN_LAUNCH` set, re-executes itself:

- `VGGBN_LAUNCH=local:N` (or `local:N:C`): as N processes on this machine, each with its `TF_CONFIG` on 127.0.0.1
  (free ports), like `torchrun --nproc_per_node`; with C, process i is pinned to cores i*C .. i*C+C-1;
- any other value is a command prefix, e.g. `VGGBN_LAUNCH="srun --kill-on-bad-exit=1"` inside a Slurm allocation:
  `srun` starts the tasks, and each task finds the cluster from Slurm's own variables (`cluster.slurm`: the step's
  nodes in Slurm's order, tasks in block order, ports `step_ports` picks from the job and step ids).

On a machine with GPUs each worker gets its own share of them (`runner.gpus`), set in `CUDA_VISIBLE_DEVICES` before
TensorFlow starts: by the local launcher for each process it starts, and by a Slurm task itself (`claim_gpus`,
which every stage that runs a model calls first) from its local id.

The launched processes carry `VGGBN_LAUNCHED=1`, so they run the stage instead of launching again. The local
launcher returns the first failing worker's status after stopping the others (`runner.supervisor`: a stage never
hangs on a dead worker), or 0 when all succeed; the workers other than the chief write their output to a log file in the system's
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
import tempfile
from pathlib import Path
from typing import NamedTuple, Sequence

from vggbn.cluster.environment import (LAUNCHED_LOCALLY, STRATEGY_ENV, DistributeError, cluster, strategy_choice,
                                       usable_cores)
from vggbn.runner.gpus import LaunchError, gpu_share, visible_gpus
from vggbn.runner.supervisor import wait

ENV = "VGGBN_LAUNCH"
LAUNCHED = "VGGBN_LAUNCHED"


def check_strategy_fits() -> None:
    """Refuse, in one line, a `VGGBN_STRATEGY` the environment contradicts, which would otherwise leave workers
    waiting for each other forever: `mirrored` (one process) where a cluster of several workers is described, or
    a single-process strategy for a launch of several workers."""
    choice = strategy_choice()
    cluster()  # a cluster described for a process told to run alone
    launching = wanted()
    if choice in ("none", "mirrored") and launching:
        how = parse(launching)
        if not isinstance(how, Local) or how.workers > 1:
            raise DistributeError(f"{STRATEGY_ENV}={choice} runs in one process, but {ENV}={launching!r} starts "
                                  f"several workers: use {STRATEGY_ENV}=multi_worker (or unset it), or unset {ENV}")



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
    check_strategy_fits()
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


def worker_environments(workers: int, cores_per_worker: int | None, gpus: Sequence[str] = ()) -> list[dict]:
    """Each local worker's additional environment: its TF_CONFIG, its share of `gpus` (the visible GPUs), and its
    thread counts when pinned."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(workers)]}
    environments = []
    for index in range(workers):
        env = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               LAUNCHED: "1", LAUNCHED_LOCALLY: "1"}
        share = gpu_share(gpus, workers, index)
        if share is not None:
            env["CUDA_VISIBLE_DEVICES"] = share
        if cores_per_worker:
            threads = str(cores_per_worker)
            env.update(TF_NUM_INTRAOP_THREADS=threads, TF_NUM_INTEROP_THREADS=threads, OMP_NUM_THREADS=threads)
        environments.append(env)
    return environments


def _libc():
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _child_setup(cores: list[int] | None):
    # By capability: prctl and affinity are Linux's; elsewhere a SIGKILLed launcher leaves its workers to the
    # collective timeout, and workers are not pinned (their thread counts still split the cores).
    prctl = getattr(_libc(), "prctl", None)
    pin = cores if hasattr(os, "sched_setaffinity") else None

    def setup():
        if prctl is not None:
            prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a killed launcher takes its workers along
        if pin:
            os.sched_setaffinity(0, pin)
    return setup


def start_local_workers(argv: Sequence[str], workers: int, cores_per_worker: int | None = None) -> int:
    available = usable_cores()
    if cores_per_worker and workers * cores_per_worker > len(available):
        raise LaunchError(f"{ENV}: {workers} workers x {cores_per_worker} cores need {workers * cores_per_worker} "
                          f"cores; this process may use {len(available)}")
    logs, processes = [], []
    try:
        for index, extra in enumerate(worker_environments(workers, cores_per_worker, visible_gpus())):
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
        return wait(processes, logs)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.unlink(missing_ok=True)

