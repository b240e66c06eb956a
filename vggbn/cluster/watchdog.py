"""A hung or dead peer ends every worker of a multi-worker stage within `VGGBN_COLLECTIVE_TIMEOUT` seconds.

TensorFlow's own per-collective timeout (`CommunicationOptions(timeout_seconds=...)`) starts a thread for every
collective that sleeps that long: at thousands of collectives a second the threads alive grow without bound and
the process aborts (`std::system_error: Resource temporarily unavailable`). Instead, each worker process runs one
thread here that wakes once a second: the code that waits on the other workers (a training step, a broadcast, a
gathered pass) marks the wait (`waiting()`), and a wait longer than the timeout ends this process with one `error:`
line. Its cost does not grow with the number of collectives: a lock-free counter and a timestamp a wait.

Under Slurm the ending worker also cancels its job step (`scancel`), so a peer that is stopped (SIGSTOP, a stuck
filesystem) and can end nothing itself goes too, with or without `srun --kill-on-bad-exit=1`; the local launcher
stops the others itself. Nothing here changes a stage's result, so it is no stage's DVC dependency.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time

from vggbn import VggbnError

TIMEOUT_ENV = "VGGBN_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT = 600  # s: longer than the chief works alone (a checkpoint, the split check) at scale
EXIT_STATUS = 124  # as timeout(1)


class WatchdogError(VggbnError):
    pass


def timeout() -> float | None:
    """Seconds a worker may wait on the others (`VGGBN_COLLECTIVE_TIMEOUT`: any number > 0; default 600), or None
    where it is `0` or `off` (wait forever)."""
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT)).strip()
    if value.lower() in ("0", "off"):
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (seconds > 0 and seconds < float("inf")):
        raise WatchdogError(f"{TIMEOUT_ENV}={value!r}: expected a number of seconds > 0, or 0 or off for no limit")
    return seconds


class _State:
    depth = 0  # nested waits (a broadcast inside a chief-led pass) count as one
    since = 0.0  # time.monotonic() when the outermost wait began
    what = ""
    thread: threading.Thread | None = None


def peer(index: int, workers: int) -> str:
    """The worker(s) that worker `index` waits on: "worker 1", or "one of workers 1, 2, 3"."""
    others = [str(i) for i in range(workers) if i != index]
    return f"worker {others[0]}" if len(others) == 1 else f"one of workers {', '.join(others)}"


def waiting_message(index: int, workers: int, seconds: float, what: str) -> str:
    """The one line a worker prints when it has waited too long on the others."""
    return (f"worker {index} of {workers}: waited {seconds:g} s ({TIMEOUT_ENV}) for {peer(index, workers)} in {what}: "
            "it is hung, dead or far too slow; ending the stage")


def start(index: int, workers: int) -> None:
    """Watch this worker's waits on the others (once a process; nothing where the timeout is off)."""
    seconds = timeout()
    if seconds is None or _State.thread is not None:
        return

    def watch():
        while True:
            time.sleep(min(1.0, seconds / 4))
            if _State.depth and time.monotonic() - _State.since > seconds:
                end(waiting_message(index, workers, seconds, _State.what), EXIT_STATUS)

    _State.thread = threading.Thread(target=watch, name="vggbn-watchdog", daemon=True)
    _State.thread.start()


@contextlib.contextmanager
def waiting(what: str):
    """Mark a wait on the other workers (`what` names it in the error: "a training step", "a broadcast")."""
    if _State.depth == 0:
        _State.since, _State.what = time.monotonic(), what
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1


def end(message: str, status: int) -> None:
    """Print `message` as this worker's one `error:` line and end it now, with its Slurm job step (every task of it:
    a stopped peer included) where it is one; never returns. `os._exit`: TensorFlow's threads blocked in a
    collective would hold up an orderly exit."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    cancel_slurm_step()
    os._exit(status)


def cancel_slurm_step() -> None:
    """Cancel this Slurm job step (every task of it), where this process is a task of a step of several tasks."""
    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ.get("SLURM_NTASKS") or "1"
    if not job or step is None or not tasks.isdigit() or int(tasks) < 2:
        return
    try:
        subprocess.run(["scancel", "--signal=KILL", f"{job}.{step}"], timeout=30, capture_output=True)
    except (OSError, subprocess.TimeoutExpired):
        pass  # srun --kill-on-bad-exit=1 still ends the others
