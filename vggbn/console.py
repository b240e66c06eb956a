"""What a run shows: how much to say (`VGGBN_LOG`), TensorFlow imported without its start-up chatter, and the
progress of long loops (a bar on a terminal, a line every tenth of the way in a log).

Everything here writes to stderr or to `logging`, and loops pass their items through unchanged: nothing can change
a result, so this module is no stage's DVC dependency (tests/test_dvc_yaml.py keeps the allow-list). No TensorFlow
or numpy at import: the stage runner and the CLI load it before they check their arguments.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import math
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

from vggbn import VggbnError

LOG_VARIABLE = "VGGBN_LOG"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LOG_STEPS = 10  # away from a terminal, a progress line each tenth of the way ...
LOG_INTERVAL = 300.0  # ... at most one every 5 minutes: a loop of minutes says nothing until its stage's summary

Item = TypeVar("Item")


class ConsoleError(VggbnError):
    pass


def level() -> int:
    """The logging level `VGGBN_LOG` asks for: info (the default: one screen), debug, or warning."""
    value = os.environ.get(LOG_VARIABLE, "info").strip().lower() or "info"
    if value not in LEVELS:
        raise ConsoleError(f"{LOG_VARIABLE}={os.environ[LOG_VARIABLE]!r}: expected one of {', '.join(LEVELS)}")
    return LEVELS[value]


def debug() -> bool:
    return level() <= logging.DEBUG


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time, around any progress bar on it (tqdm redraws the bar)."""

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup_logging(name: str) -> None:
    """Log lines `HH:MM:SS <name>: message` on stderr: vggbn's at VGGBN_LOG's level, other libraries' warnings.

    Under debug, each line also names the module that logged it, and other libraries' info lines come back.
    """
    wanted = level()
    handler = _StderrHandler()
    where = " %(name)s" if wanted <= logging.DEBUG else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s {name}{where}: %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if wanted <= logging.DEBUG else logging.WARNING)
    logging.getLogger("vggbn").setLevel(wanted)


# --- TensorFlow's start-up chatter ------------------------------------------------------------------------------

# A native log record: absl's `I0000 00:00:1796120755.613941    1092 file.cc:31] ...` (MMDD hh:mm:ss.us, the
# seconds unbounded before absl is set up) or TensorFlow's older `2025-09-17 14:44:05.157831: I path/file.cc:32] ...`;
# the severity letter is I, W, E or F.
_RECORD = re.compile(r"(?:(?P<absl>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |"
                     r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<tf>[IWEF]) )")
_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# Errors a machine without a GPU logs at start-up: not problems of the run.
_NO_GPU = ("failed call to cuInit", "Unable to register cuDNN factory", "Unable to register cuFFT factory",
           "Unable to register cuBLAS factory")


def start_up_lines_kept(text: str) -> list[str]:
    """The lines of TensorFlow's native start-up output worth showing: errors (but not a missing GPU's) with their
    continuation lines, and anything that is no log record. Info and warning records (CUDA drivers not found,
    oneDNN, CPU features, with their continuation lines) and absl's preamble are chatter."""
    kept, chatter = [], False
    for line in text.splitlines():
        record = _RECORD.match(line)
        if record:
            severity = record.group("absl") or record.group("tf")
            chatter = severity in "IW" or any(marker in line for marker in _NO_GPU)
        elif line.startswith(_PREAMBLE):
            continue
        if not chatter:
            kept.append(line)
    return kept


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Capture what native code writes to file descriptor 2, then show only `start_up_lines_kept` of it.

    Python's own writes (warnings, tracebacks, logging through `_StderrHandler`) go straight to the real stderr.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        sys.stderr = open(saved, "w", closefd=False, encoding=python_stderr.encoding, errors="backslashreplace")
        try:
            yield
        finally:
            sys.stderr.flush()
            sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = start_up_lines_kept(capture.read().decode(errors="replace"))
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with native stderr filtered; afterwards the module holds its real loader."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader
        try:
            with native_stderr_filtered():
                self.loader.exec_module(module)
                # Finding the devices logs too (a missing GPU's cuInit error): let it happen inside the window.
                module.config.list_physical_devices()
        finally:
            _remove_finder()


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def _remove_finder() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _QuietTensorFlow)]


def quiet_tensorflow_import() -> None:
    """From now on, the first import of TensorFlow (directly or through Keras) keeps its start-up chatter off
    the terminal, while errors it logs then stay visible. Under VGGBN_LOG=debug the start-up lines show whole.

    TF_CPP_MIN_LOG_LEVEL=3 (unless set) silences TensorFlow's native log once its logging is set up: an error that
    stops a run still raises, with its message, but errors TensorFlow survives are not shown (Keras' `fit` on
    arrays logs one about an op attribute, `use_unbounded_threadpool`, that this TensorFlow does not know). The
    lines written before, at the import, go to file descriptor 2 directly whatever the level: they are filtered
    there, during the import only.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or debug():
        return
    _remove_finder()
    sys.meta_path.insert(0, _QuietTensorFlow())


# --- progress -----------------------------------------------------------------------------------------------

class _LogProgress:
    """Away from a terminal: a log line each 1/LOG_STEPS of the way, at most one every LOG_INTERVAL seconds."""

    def __init__(self, total: int | None, desc: str, unit: str):
        self.total, self.desc, self.unit = total, desc, unit
        self.done, self.start = 0, time.monotonic()
        self.last_time, self.last_step = self.start, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last_time < LOG_INTERVAL:
            return
        if self.total:
            step = self.done * LOG_STEPS // self.total
            if step <= self.last_step or self.done >= self.total:
                return
            self.last_step = step
        self.last_time = now
        logging.getLogger("vggbn.progress").info(self.line(now))

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.start, 1e-9)
        speed = f"{rate:.3g} {self.unit}/s" if rate >= 1 or not rate else f"{1 / rate:.3g} s/{self.unit}"
        if not self.total:
            return f"{self.desc}: {self.done:,} {self.unit} ({speed})"
        left = (self.total - self.done) / rate if rate else float("inf")
        return (f"{self.desc}: {100 * self.done // self.total}% ({self.done:,}/{self.total:,} {self.unit}, "
                f"{speed}, {_duration(left)} left)")

    def close(self) -> None:
        pass


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def open_progress(total: int | None, desc: str, unit: str = "it"):
    """A progress display with `update(n=1)` and `close()`: on a terminal a tqdm bar (rate and time left) that
    disappears when closed; elsewhere (a log file, CI) a line each tenth of the way, at most one every
    LOG_INTERVAL seconds; nothing under VGGBN_LOG=warning."""
    if level() > logging.INFO:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=None)
    return _LogProgress(total, desc, unit)


@contextmanager
def progress(total: int | None, desc: str, unit: str = "it"):
    """`open_progress` as a context: closed at the end of the block."""
    bar = open_progress(total, desc, unit)
    try:
        yield bar
    finally:
        bar.close()


def tracked(items: Iterable[Item], total: int | None, desc: str, unit: str = "it",
            size: Callable[[Item], int] | None = None) -> Iterator[Item]:
    """`items`, unchanged, with `progress` advancing by `size(item)` (default 1) after each."""
    with progress(total, desc, unit) as bar:
        for item in items:
            yield item
            bar.update(size(item) if size else 1)
