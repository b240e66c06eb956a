"""The distributed context: who this worker is, the one rule that splits a batch between workers (and between a
worker's replicas), the one way to say that only the chief writes, the `tf.distribute` strategy every stage that runs
a model works under, and the collectives the stages need. Importing it imports no TensorFlow (each function that
needs it imports it), so `vggbn.storage` uses the identity, the split and `chief_only` without it.

How many devices or machines a run uses is the environment's business, never a param, so moving from a laptop to
a cluster reruns nothing in DVC. `VGGBN_STRATEGY` picks the strategy: `none` (TensorFlow's default strategy, one
device), `mirrored` (every local GPU, or every logical CPU device), `multi_worker` (the workers that `TF_CONFIG` or
a Slurm job step describes); unset or `auto`: `multi_worker` when the environment describes a cluster of several
workers, `mirrored` when several GPUs are visible, `none` otherwise.

Under `multi_worker` every worker runs the same stage command (SPMD). The chief (TF_CONFIG's `chief` task, else
worker 0; Slurm's task 0) makes every decision that depends on files (what to resume, what to reuse), broadcasts
it, and alone writes files; the other workers compute their part of each batch and write nothing.
`vggbn.cluster.environment` reads the cluster from the environment. This module decides which rows each worker
reads, so it is a DVC dependency of every stage that imports it (tests/test_layout.py checks).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from vggbn import compat
from vggbn.cluster import devices, watchdog
from vggbn.cluster import environment
from vggbn.cluster.environment import STRATEGY_ENV as ENV
from vggbn.cluster.environment import DistributeError, cluster, is_chief, multi_worker
from vggbn.cluster.slurm import slurm_addresses

Writer = TypeVar("Writer", bound=Callable)

__all__ = ["DistributeError", "cluster", "is_chief", "multi_worker", "worker", "split", "shares", "my_share",
           "chief_only"]


def worker() -> tuple[int, int]:
    """(this worker's index, the workers): (0, 1) outside a multi-worker cluster. The index is the strategy's own
    (the chief 0): worker i holds replicas i R to (i + 1) R - 1 of the strategy's, R replicas on each."""
    return (cluster().index, cluster().workers) if multi_worker() else (0, 1)


def split(count: int, parts: int) -> list[slice]:
    """The one rule that splits `count` rows into `parts` contiguous runs, in order: part i takes rows
    count i // parts to count (i + 1) // parts, so the runs differ by one row at most and none is empty while
    count >= parts. Workers split a batch by it, and each worker's replicas split its rows by it again."""
    return [slice(count * i // parts, count * (i + 1) // parts) for i in range(parts)]


def shares(count: int) -> list[int]:
    """How many rows of a batch of `count` each worker takes, in worker order (`split`); one worker takes them all
    outside a multi-worker cluster."""
    return [part.stop - part.start for part in split(count, worker()[1])]


def my_share(count: int) -> slice:
    """This worker's rows of a batch of `count` (`split`)."""
    index, workers = worker()
    return split(count, workers)[index]


def chief_only(write: Writer) -> Writer:
    """The one way to say that only the chief writes: `write` runs on the chief (always, outside a cluster) and is
    skipped, returning None, on every other worker. Every writer of a declared output is decorated with it."""
    @functools.wraps(write)
    def on_the_chief(*args, **kwargs):
        return write(*args, **kwargs) if is_chief() else None
    return on_the_chief  # type: ignore[return-value]


@functools.cache
def strategy():
    """The one strategy of this process (made once: a multi-worker strategy starts a server on its port)."""
    import tensorflow as tf

    cluster()  # refuses a one-process strategy where a cluster is described
    _warn_if_gpus_unusable()
    choice, described = environment.strategy_choice(), cluster()
    if choice == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        choice = "multi_worker" if described.workers > 1 else "mirrored" if len(gpus) > 1 else "none"
    if choice == "none":
        return tf.distribute.get_strategy()
    if choice == "mirrored":
        return tf.distribute.MirroredStrategy()
    if described.workers <= 1:
        raise DistributeError(f"{ENV}=multi_worker, but neither TF_CONFIG nor a Slurm job step of several tasks "
                              "describes a cluster (see docs/distributed.md)")
    resolver = None
    if described.source == "slurm":
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": slurm_addresses()}), task_type="worker", task_id=described.index,
            rpc_layer="grpc")
    options = communication_options(len(tf.config.list_physical_devices("GPU")))
    compat.one_instance_key_per_collective()  # else memory grows ~16 KB a training step, for good
    watchdog.start(described.index, described.workers)  # a hung or dead peer ends this worker (no per-op timeout)
    try:
        with watchdog.waiting("the cluster's start"):
            made = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    except RuntimeError as error:
        if "must be configured at program startup" not in str(error):
            raise
        raise RuntimeError("a multi-worker strategy must be made before TensorFlow runs anything: call "
                           "vggbn.cluster.distribute.strategy() first") from None
    _end_on_sigterm()
    return made


def _end_on_sigterm() -> None:
    """SIGTERM ends this worker at once, as it ends any process. Under Slurm, TensorFlow's coordination service
    catches it (a preemption notice, for a checkpoint handler vggbn does not use), so the tasks of a cancelled step
    (`scancel`, `srun --kill-on-bad-exit` after a task died) lived on until Slurm's SIGKILL, KillWait later (30 s
    by default, minutes on some clusters)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def communication_options(gpus: int):
    """The collectives' options for workers with `gpus` GPUs each: NCCL between GPU workers (TensorFlow's
    multi-worker default is ring all-reduce over gRPC, even between GPUs), ring between CPU workers. No
    `timeout_seconds`: TensorFlow starts a thread per collective that sleeps that long (thousands alive within
    seconds of training); `vggbn.cluster.watchdog` bounds a wait on a hung or dead peer instead."""
    import tensorflow as tf

    implementation = tf.distribute.experimental.CommunicationImplementation
    return tf.distribute.experimental.CommunicationOptions(
        implementation=implementation.NCCL if gpus else implementation.RING)


def waiting(what: str):
    """Mark a wait on the other workers (`vggbn.cluster.watchdog`): a training step, a broadcast, a gathered pass."""
    return watchdog.waiting(what)


def _warn_if_gpus_unusable() -> None:
    """One warning where nvidia-smi shows GPUs that TensorFlow cannot use, naming why (`cluster.devices`)."""
    import tensorflow as tf

    message = devices.unusable_gpu_warning(devices.system_gpus(), len(tf.config.list_physical_devices("GPU")),
                                           dict(tf.sysconfig.get_build_info()), devices.gpus_hidden())
    if message:
        logging.getLogger("vggbn.devices").warning("warning: %s", message)


def describe() -> dict:
    """What each stage's metrics record: the strategy's kind, its replica count, and the devices this worker ran on
    (`cpu`, or the GPU model and count)."""
    import tensorflow as tf

    current = strategy()
    kind = ("multi_worker" if isinstance(current, tf.distribute.MultiWorkerMirroredStrategy) else
            "mirrored" if isinstance(current, tf.distribute.MirroredStrategy) else "default")
    names = [tf.config.experimental.get_device_details(gpu).get("device_name", "GPU")
             for gpu in tf.config.list_physical_devices("GPU")]
    return {"strategy": kind, "replicas": int(current.num_replicas_in_sync), "device": devices.device_label(names)}


def replicas() -> int:
    return int(strategy().num_replicas_in_sync)


def broadcast(value: np.ndarray) -> np.ndarray:
    """The chief's `value` (an integer or float array), on every worker; each worker's own shape must match.

    An all-reduce in which only the chief's first replica contributes: exact for integers, and for floats, since
    every other term is zero.
    """
    value = np.asarray(value)
    if replicas() == 1 or not multi_worker():
        return value
    import tensorflow as tf

    dtype = "int64" if value.dtype.kind in "iub" else "float32" if value.dtype == np.float32 else "float64"
    mine = value.astype(dtype) if is_chief() else np.zeros(value.shape, dtype)
    values = strategy().experimental_distribute_values_from_function(
        lambda context: tf.constant(mine if context.replica_id_in_sync_group == 0 else np.zeros_like(mine)))
    with watchdog.waiting("a broadcast from the chief"):
        return strategy().reduce("SUM", values, axis=None).numpy().astype(value.dtype)


def barrier() -> None:
    """Every worker waits here until all have arrived (e.g. until the chief has written a file they read)."""
    broadcast(np.zeros(1))


def sync_variables(variables) -> None:
    """Every worker's `variables` (Keras or TensorFlow) set to the chief's values (after the chief alone resumed)."""
    if multi_worker():
        for variable in variables:
            variable.assign(broadcast(np.asarray(variable.numpy())))


def broadcast_json(obj):
    """The chief's JSON-able `obj` on every worker (the others pass anything, e.g. None)."""
    if not multi_worker():
        return obj
    data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8) if is_chief() else np.zeros(0, np.uint8)
    size = int(broadcast(np.array([data.size]))[0])
    data = data if is_chief() else np.zeros(size, np.uint8)
    return json.loads(broadcast(data.astype(np.int64)).astype(np.uint8).tobytes().decode())


def split_run(function: Callable, *arrays: np.ndarray, trim: bool = True):
    """`function` (traced; of one slice of each array, returning a tensor or a list of them) over the arrays' rows,
    each replica computing a disjoint, contiguous slice; the outputs, concatenated in replica (so row) order, on
    every worker.

    Every worker passes the same arrays (it reads the same data in the same order). Arrays whose rows do not divide
    evenly are padded with zero rows; `trim` drops their outputs (False: the caller's outputs are per replica).
    """
    import tensorflow as tf

    current, count = strategy(), len(arrays[0])
    n = int(current.num_replicas_in_sync)
    per_replica = -(-count // n) if count else 1
    padded = []
    for array in arrays:
        array = np.asarray(array)
        block = np.zeros((per_replica * n, *array.shape[1:]), dtype=np.float32)
        block[:count] = array
        padded.append(block)
    values = current.experimental_distribute_values_from_function(
        lambda context: tuple(tf.constant(block[context.replica_id_in_sync_group * per_replica:][:per_replica])
                              for block in padded))
    with watchdog.waiting("a gathered pass"):
        outputs = _gathered(function)(values)
        cut = (lambda o: o.numpy()[:count]) if trim else (lambda o: o.numpy())
        return [cut(o) for o in outputs] if isinstance(outputs, (list, tuple)) else cut(outputs)


def own_images(inputs, paths: Sequence[str], size: tuple[int, int], flip: bool = False):
    """For each batch of `inputs.batch_size` of `paths` (the last may be smaller), this worker's share of its
    images (`my_share`), decoded by `inputs` (an `images.ImageInput`): the only images this worker reads. One
    tf.data pipeline over all of its rows, so decoding still runs ahead of the model."""
    batches = [paths[i:i + inputs.batch_size] for i in range(0, len(paths), inputs.batch_size)]
    mine = [batch[my_share(len(batch))] for batch in batches]
    decoded = iter(inputs.dataset([path for share in mine for path in share], size, flip=flip))
    buffer = np.zeros((0, *size, 3), np.float32)
    for share in mine:
        while len(buffer) < len(share):
            buffer = np.concatenate([buffer, next(decoded).numpy()])
        yield buffer[:len(share)]
        buffer = buffer[len(share):]


def gather_shares(function: Callable, counts: list[int], *mine: np.ndarray, trim: bool = True):
    """`function` (traced; of one slice of each array, returning a tensor or a list of them) over a batch whose rows
    each worker holds only its own share of: `mine`, this worker's rows of each array (`my_share`), which its
    replicas split among them; `counts`, every worker's row count (`shares`). The outputs of the whole batch, in
    row order, on every worker: only outputs travel between workers, never inputs.

    Each worker's rows are padded with zero rows to the largest share, so every replica computes a slice of the
    same shape (collectives need it); `trim` drops the padding's outputs (False: every replica's outputs, in replica
    order, laid out as `gathered_rows` says).
    """
    import tensorflow as tf

    current = strategy()
    local, per_replica = _share_layout(counts)
    blocks = []
    for array in mine:
        array = np.asarray(array, dtype=np.float32)
        block = np.zeros((per_replica * local, *array.shape[1:]), dtype=np.float32)
        block[:len(array)] = array
        blocks.append(block)
    values = current.experimental_distribute_values_from_function(  # global replica id = worker * local + k
        lambda context: tuple(tf.constant(block[context.replica_id_in_sync_group % local * per_replica:][:per_replica])
                              for block in blocks))
    keep = gathered_rows(counts) >= 0
    cut = (lambda o: o.numpy()[keep]) if trim else (lambda o: o.numpy())
    with watchdog.waiting("a gathered pass"):
        outputs = _gathered(function)(values)
        return [cut(o) for o in outputs] if isinstance(outputs, (list, tuple)) else cut(outputs)


def _share_layout(counts: list[int]) -> tuple[int, int]:
    """(replicas of each worker, rows each replica computes) for a batch shared as `counts`."""
    local = replicas() // len(counts)
    return local, max(-(-max(counts) // local), 1)


def gathered_rows(counts: list[int]) -> np.ndarray:
    """For each row of `gather_shares`' untrimmed outputs, the batch row it computed, or -1 for padding."""
    local, per_replica = _share_layout(counts)
    span, start = per_replica * local, 0
    rows = np.full(span * len(counts), -1, dtype=np.int64)
    for worker, count in enumerate(counts):
        rows[worker * span:worker * span + count] = np.arange(start, start + count)
        start += count
    return rows


def _gathered(function: Callable):
    """`function` run on every replica, its outputs gathered: traced once per function, and kept on the function
    itself, so it lives as long as the caller keeps `function` (a predictor's model goes with its predictor; a cache
    here would keep every model a grid of trainings made)."""
    cached = getattr(function, "vggbn_gathered", None)
    if cached is not None:
        return cached
    import tensorflow as tf

    current = strategy()

    @tf.function(reduce_retracing=True, autograph=False)
    def gathered(values):
        outputs = current.run(function, args=values)
        return tf.nest.map_structure(lambda o: current.gather(o, axis=0), outputs)

    try:
        function.vggbn_gathered = gathered  # on the function: a weak-keyed cache would keep it alive through the closure
    except AttributeError:  # a bound method or a builtin: traced again on each call, and kept by nothing
        pass
    return gathered


def led_by_chief(work: Callable[[Callable], object], step: Callable[[list[int]], Iterable]):
    """Run a pass whose plan depends on files only the chief reads (what to resume, what to reuse), in lockstep.

    The chief runs `work(announced_step)`: each call of the step first announces its row indices to the other
    workers. Each other worker runs `step` over the rows the chief announces, discarding what it yields (its part
    of each batch went to the chief through the collectives inside), until the chief's result arrives: `work`'s
    JSON-able return value, which every worker returns.
    """
    if not multi_worker():
        return work(step)
    if is_chief():
        def announced(rows):
            rows = np.asarray(rows, dtype=np.int64)
            broadcast(np.array([rows.size]))
            broadcast(rows)
            yield from step(rows.tolist())

        result = work(announced)
        broadcast(np.array([-1]))
        return broadcast_json(result)
    while True:
        size = int(broadcast(np.zeros(1, np.int64))[0])
        if size < 0:
            return broadcast_json(None)
        for _ in step(broadcast(np.zeros(size, np.int64)).tolist()):
            pass


def remove_shared(folder: Path) -> None:
    """Remove a work folder that every worker may read (a shared filesystem): the chief alone removes it, once every
    worker has arrived here (done reading it), and none goes on before it is gone."""
    barrier()
    chief_only(shutil.rmtree)(folder, ignore_errors=True)
    barrier()


def shared_temporary_folder(stack: contextlib.ExitStack) -> str:
    """A temporary work folder, the chief's on every worker (it writes the frozen rows there, every worker reads
    them: with workers on several machines, pass a `work_dir` on a filesystem they share instead)."""
    folder = chief_only(
        lambda: stack.enter_context(tempfile.TemporaryDirectory(prefix="vggbn-transfer-")))()
    stack.callback(barrier)  # on exit, first (last in, first out): removed once every worker is done
    return broadcast_json(folder)
