"""A Slurm job step's workers: its compact host and task lists expanded, in Slurm's order, and each task's port,
picked from the job and step ids (no TensorFlow)."""

from __future__ import annotations

import os
import subprocess
from typing import Sequence

from vggbn.cluster.environment import DistributeError


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

