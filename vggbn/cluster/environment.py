"""Who this process is among a run's workers, read from the environment alone (no TensorFlow): `VGGBN_STRATEGY`,
`TF_CONFIG`, or a Slurm job step's variables; and the cores it may run on. `vggbn.cluster.distribute` is the one
place the rest of the library asks (`cluster`, `is_chief`, `worker`); this module only parses.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

from vggbn import VggbnError

LAUNCHED_LOCALLY = "VGGBN_LAUNCHED_LOCALLY"  # the local launcher's TF_CONFIG, even inside a Slurm step

STRATEGY_ENV = "VGGBN_STRATEGY"
STRATEGIES = ("auto", "none", "mirrored", "multi_worker")


class DistributeError(VggbnError):
    pass


def usable_cores() -> list[int]:
    """The cores this process may run on: its affinity where the system keeps one (Linux), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


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



def is_chief() -> bool:
    """Whether this process writes the stage's files: always, outside a cluster. Deciding who writes decides no
    byte of what is written."""
    return cluster().index == 0


def multi_worker() -> bool:
    return cluster().workers > 1
