"""The local launcher's supervisor: waits on the workers it started, and when one fails stops the others (SIGTERM,
then SIGKILL; at once for a stopped one) and names them, so a stage never hangs on a dead worker."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from vggbn.cluster.watchdog import TIMEOUT_ENV, timeout as collective_timeout

LOG_TAIL_LINES = 20


def wait(processes: list[subprocess.Popen], logs: list[Path]) -> int:
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
