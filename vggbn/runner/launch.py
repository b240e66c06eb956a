"""Where a stage runs: the cluster the environment describes (which process is the chief, the one that writes), and
the launcher prefix `VGGBN_LAUNCH` names, which runs a stage as every worker of a multi-worker job.

`dvc repro` runs one command per stage, while under `MultiWorkerMirroredStrategy` every worker must run that same
command (SPMD). A stage that runs a model, started with `VGGBN_LAUNCH` set, re-executes itself:

- `VGGBN_LAUNCH=local:N` (or `local:N:C`): as N processes on this machine, each with its `TF_CONFIG` on 127.0.0.1
  (free ports), like `torchrun --nproc_per_node`; with C, process i is pinned to cores i*C .. i*C+C-1;
- any other value is a command prefix, e.g. `VGGBN_LAUNCH="srun --kill-on-bad-exit=1"` inside a Slurm allocation:
  `srun` starts the tasks, and each task finds the cluster from Slurm's own variables (`slurm_addresses`: the step's
  nodes in Slurm's order, tasks in block order, ports `step_ports` picks from the job and step ids).

On a machine with GPUs each worker gets its own share of them (`gpu_share`), set in `CUDA_VISIBLE_DEVICES` before
TensorFlow starts: by the local launcher for each process it starts, and by a Slurm task itself (`claim_gpus`,
which every stage that runs a model calls first) from its local id.

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
from vggbn.runner.watchdog import TIMEOUT_ENV, timeout as collective_timeout

ENV = "VGGBN_LAUNCH"
LAUNCHED = "VGGBN_LAUNCHED"
LAUNCHED_LOCALLY = "VGGBN_LAUNCHED_LOCALLY"  # the local launcher's TF_CONFIG, even inside a Slurm step
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
    """The cluster the environment describes: TF_CONFIG's, else a Slurm job step's of several tasks, else none.
    A process told to run alone (`VGGBN_STRATEGY=none` or `mirrored`) where a cluster of several workers is
    described, or a TF_CONFIG inside a Slurm step of several tasks (it would override Slurm's own ranks), is refused:
    every process would take itself for the chief, or every task for the same one."""
    described, choice = described_cluster(), strategy_choice()
    if choice in ("none", "mirrored") and described.workers > 1:
        raise DistributeError(f"{STRATEGY_ENV}={choice} runs in one process, but {described.source} describes "
                              f"{described.workers} workers (each would write the same outputs as the chief): use "
                              f"{STRATEGY_ENV}=multi_worker (or unset it), or run without the cluster")
    return described


def described_cluster() -> Cluster:
    slurm = _slurm_step_tasks()
    text = os.environ.get("TF_CONFIG", "").strip()
    if text and slurm > 1 and not os.environ.get(LAUNCHED_LOCALLY):
        raise DistributeError(f"TF_CONFIG is set inside a Slurm job step of {slurm} tasks, which would override "
                              "Slurm's own ranks (every task the same one): unset TF_CONFIG for the step")
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
    if slurm > 1:
        return Cluster(slurm, int(os.environ.get("SLURM_PROCID", "0")), "slurm")
    return Cluster(1, 0, "")


def _slurm_step_tasks() -> int:
    """The tasks of the Slurm job step this process is a task of (0 outside one)."""
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS")
    return int(tasks) if os.environ.get("SLURM_STEP_ID") is not None and tasks and tasks.isdigit() else 0


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


PORT_BASE_ENV = "VGGBN_PORT_BASE"
SLURM_PORT_BASE = 20000  # below Linux's ephemeral ports (32768 and up), which any process may hold
PORTS_PER_STEP = 64  # tasks of one step on one node, at most


def step_ports(job_id: int, step_id: int, base: int) -> range:
    """The ports of a Slurm job step's tasks on each node (task with local id i: the range's i-th): a block of
    `PORTS_PER_STEP` picked by the job and step ids, so two steps of a job (`dvc queue start -j 2`), or two jobs
    sharing a node, do not collide (steps of one job never, unless hundreds run at once)."""
    top = 32768 if base < 32768 else 65536
    blocks = (top - base) // PORTS_PER_STEP
    if blocks < 1:
        raise DistributeError(f"{PORT_BASE_ENV}={base}: leaves no room for a step's {PORTS_PER_STEP} ports below "
                              f"{top}")
    start = base + (job_id * 8 + step_id) % blocks * PORTS_PER_STEP
    return range(start, start + PORTS_PER_STEP)


def tasks_per_node(text: str) -> list[int]:
    """Slurm's compact task counts (`SLURM_STEP_TASKS_PER_NODE`, e.g. "2(x3),1"), one number a node."""
    counts = []
    for part in filter(None, text.split(",")):
        number, _, repeat = part.partition("(x")
        counts += [int(number)] * (int(repeat.rstrip(")")) if repeat else 1)
    return counts


def expand_hostlist(nodelist: str) -> list[str]:
    """Slurm's compact node list ("node[9-10]") as host names, in Slurm's own order (node9 before node10)."""
    try:
        done = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DistributeError(f"SLURM_STEP_NODELIST={nodelist!r}: `scontrol show hostnames` failed ({error})") \
            from None
    if done.returncode:
        raise DistributeError(f"SLURM_STEP_NODELIST={nodelist!r}: `scontrol show hostnames` failed: "
                              f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return done.stdout.split()


def block_addresses(hosts: Sequence[str], counts: Sequence[int], port_base: int) -> list[str]:
    """Every task's address, by rank, where Slurm places tasks in blocks (its default): the first node's tasks
    first, each task of a node on port `port_base` + its local id."""
    if max(counts, default=0) > PORTS_PER_STEP:
        raise DistributeError(f"{max(counts)} tasks on one node: at most {PORTS_PER_STEP} a node are supported")
    if len(hosts) != len(counts):
        raise DistributeError(f"Slurm names {len(hosts)} nodes ({', '.join(hosts)}) but task counts for "
                              f"{len(counts)} ({', '.join(map(str, counts))})")
    return [f"{host}:{port_base + local}" for host, count in zip(hosts, counts) for local in range(count)]


def _slurm_variable(name: str, *fallbacks: str) -> str:
    for key in (name, *fallbacks):
        if os.environ.get(key):
            return os.environ[key]
    raise DistributeError(f"{name} is not set: run the stage as a task of a Slurm job step (srun)")


def slurm_addresses() -> list[str]:
    """This Slurm job step's workers (host:port, by SLURM_PROCID), from Slurm's variables. This task's own entry is
    checked against its node and local id: a step whose tasks are not placed in blocks is refused."""
    hosts = expand_hostlist(_slurm_variable("SLURM_STEP_NODELIST", "SLURM_NODELIST"))
    counts = tasks_per_node(_slurm_variable("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"))
    job, step = _slurm_variable("SLURM_JOB_ID", "SLURM_JOBID"), _slurm_variable("SLURM_STEP_ID", "SLURM_STEPID")
    if not (job.isdigit() and step.isdigit()):
        raise DistributeError(f"SLURM_JOB_ID={job!r}, SLURM_STEP_ID={step!r}: expected numbers (a task of a job "
                              "step started by srun)")
    base = step_ports(int(job), int(step), _port_base()).start
    addresses = block_addresses(hosts, counts, base)
    rank, local = int(_slurm_variable("SLURM_PROCID")), int(_slurm_variable("SLURM_LOCALID"))
    node = os.environ.get("SLURMD_NODENAME")
    if rank >= len(addresses) or (node and addresses[rank] != f"{node}:{base + local}"):
        raise DistributeError(f"Slurm task {rank} (local id {local} on {node}) is not where block placement puts it "
                              f"({addresses[rank] if rank < len(addresses) else 'nowhere'}): run srun with "
                              "--distribution=block")
    return addresses


def _port_base() -> int:
    value = os.environ.get(PORT_BASE_ENV, str(SLURM_PORT_BASE))
    if not value.isdigit() or not 1024 <= int(value) <= 65000:
        raise DistributeError(f"{PORT_BASE_ENV}={value!r}: expected a port number from 1024 to 65000")
    return int(value)


def visible_gpus(env=os.environ) -> list[str]:
    """The GPUs this process may use, as CUDA names them, without starting CUDA: `CUDA_VISIBLE_DEVICES` where
    set, else every /dev/nvidiaN device."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return [name.strip() for name in env["CUDA_VISIBLE_DEVICES"].split(",") if name.strip() not in ("", "-1")]
    numbers = [p.name[len("nvidia"):] for p in Path("/dev").glob("nvidia*") if p.name[len("nvidia"):].isdigit()]
    return sorted(numbers, key=int)


def gpu_share(gpus: Sequence[str], workers_here: int, local_index: int) -> str | None:
    """The `CUDA_VISIBLE_DEVICES` of worker `local_index` of `workers_here` on one machine: an equal, disjoint
    share of `gpus` (any remainder unused: every worker must have as many as the others), or None where there are
    no GPUs (nothing to split: the workers compute on the CPU)."""
    if not gpus:
        return None
    if workers_here > len(gpus):
        raise LaunchError(f"{workers_here} workers on this machine but {len(gpus)} GPUs ({','.join(gpus)}): start "
                          "at most one worker a GPU, or hide the GPUs (CUDA_VISIBLE_DEVICES=)")
    each = len(gpus) // workers_here
    return ",".join(gpus[local_index * each:(local_index + 1) * each])


def claim_gpus() -> None:
    """As a task of a Slurm step of several tasks, keep only this task's share of its node's GPUs, by its local id
    (before TensorFlow starts CUDA). Nothing where Slurm binds GPUs to tasks itself (`--gpus-per-task`), or outside
    Slurm (the local launcher sets each worker's share when it starts it)."""
    if cluster().source != "slurm" or os.environ.get("SLURM_GPUS_PER_TASK"):
        return
    here = tasks_per_node(_slurm_variable("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"))
    hosts = expand_hostlist(_slurm_variable("SLURM_STEP_NODELIST", "SLURM_NODELIST"))
    node = os.environ.get("SLURMD_NODENAME")
    workers_here = here[hosts.index(node)] if node in hosts and len(here) == len(hosts) else max(here)
    share = gpu_share(visible_gpus(), workers_here, int(_slurm_variable("SLURM_LOCALID")))
    if share is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = share


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


def usable_cores() -> list[int]:
    """The cores this process may run on: its affinity where the system keeps one (Linux), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


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
        return _wait(processes, logs)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.unlink(missing_ok=True)


def _wait(processes: list[subprocess.Popen], logs: list[Path]) -> int:
    """0 when every worker succeeds; else the first failure's status, once the others are stopped. Once a worker has
    succeeded, the others get `collective_timeout()` seconds to finish (a worker hung outside a collective), then
    are stopped and named."""
    deadline, count = None, len(processes)
    while True:
        statuses = [process.poll() for process in processes]
        failed = [(index, status) for index, status in enumerate(statuses) if status not in (None, 0)]
        running = [index for index, status in enumerate(statuses) if status is None]
        if failed:
            index, status = min(failed, key=lambda failure: (failure[1] > 0, failure[0]))  # a killed one: the cause
            stopped = [i for i in running if _is_stopped(processes[i].pid)]
            _stop(processes)
            how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"failed (exit status {status})"
            if index:
                tail = logs[index - 1].read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                print(f"worker {index} of {count} {how}; its last lines:", *tail, sep="\n", file=sys.stderr)
            if status < 0:
                print(f"error: worker {index} of {count} was {how}", file=sys.stderr)
            if stopped:
                print(f"{_workers(stopped, count)} stopped (SIGSTOP or a debugger) when worker {index} failed: "
                      "killed", file=sys.stderr)
            if set(running) - set(stopped):
                print(f"{_workers(sorted(set(running) - set(stopped)), count)} still running when worker {index} "
                      "failed: stopped", file=sys.stderr)
            return status if status > 0 else 128 - status
        if not running:
            return 0
        if len(running) < count and collective_timeout() is not None:
            deadline = deadline or time.monotonic() + collective_timeout()
            if time.monotonic() > deadline:
                _stop(processes)
                print(f"error: {_workers(running, count)} did not finish within {collective_timeout():g} s "
                      f"({TIMEOUT_ENV}) of the others: hung, stopped", file=sys.stderr)
                return 124
        time.sleep(0.1)


def _workers(indices: list[int], count: int) -> str:
    return f"worker{'s' if len(indices) > 1 else ''} {', '.join(map(str, indices))} of {count}"


def _is_stopped(pid: int) -> bool:
    """Whether a process is stopped (SIGSTOP, or traced): it cannot handle SIGTERM until it runs again."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "Tt"
    except (OSError, IndexError):
        return False


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL 3 s later (a worker blocked in a collective does not end on SIGTERM); SIGKILL at once
    to a stopped one."""
    for process in processes:
        if process.poll() is None:
            process.kill() if _is_stopped(process.pid) else process.terminate()
    for process in processes:
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
