"""Each worker's share of a machine's GPUs, set in `CUDA_VISIBLE_DEVICES` before TensorFlow starts CUDA: by the
local launcher for each process it starts, and by a Slurm task itself (`claim_gpus`) from its local id."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from vggbn import VggbnError
from vggbn.cluster.environment import cluster
from vggbn.cluster.slurm import _slurm_variable, expand_hostlist, tasks_per_node


class LaunchError(VggbnError):
    pass


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

