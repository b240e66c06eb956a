"""Write outputs under a temporary name in the same folder and rename them when complete; say so in one line when
the disk is full.

A killed stage then never leaves a file that looks finished: at worst a `.partial-<pid>-*` sibling (git ignores
them), which the next write of the same output removes, as does any later write into that folder once the process
named by the pid is gone. A write that runs out of space fails with a `DiskFullError` naming the path, the space it
needed and the space left, and removes its temporary file.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vggbn import VggbnError

PARTIAL_PREFIX = ".partial-"
_PARTIAL_PID = re.compile(rf"^{re.escape(PARTIAL_PREFIX)}(\d+)-")
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# HDF5 reports a failed write as h5py's RuntimeError or OSError with the errno inside its message.
_DISK_FULL_TEXT = re.compile(r"errno = (28|122)\b|No space left on device|Disk quota exceeded")


class DiskFullError(VggbnError):
    pass


def partial_path(path: str | os.PathLike, tag: str = "") -> Path:
    """The temporary name this process writes `path` under (optionally tagged, for a second temporary of it)."""
    path = Path(path)
    return path.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{tag}{path.name}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_partials(path: str | os.PathLike, *, everything: bool = False) -> None:
    """Remove what killed writers left beside `path`: any temporary of `path` itself (DVC's lock allows one writer
    of an output at a time), and any temporary in its folder whose writing process is gone. `everything`: every
    temporary in the folder (`path` is then the folder, e.g. a work folder only its own stage writes)."""
    folder = Path(path) if everything else Path(path).parent
    if not folder.is_dir():
        return
    for stale in folder.glob(f"{PARTIAL_PREFIX}*"):
        match = _PARTIAL_PID.match(stale.name)
        if everything or stale.name.endswith(f"-{Path(path).name}") or (match and not _alive(int(match.group(1)))):
            _remove(stale)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says the disk or the quota is full."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return True
        if isinstance(error, (OSError, RuntimeError)) and _DISK_FULL_TEXT.search(str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def disk_full_error(path: str | os.PathLike, needed: int | None, written: int | None = None,
                    ahead: bool = False) -> DiskFullError:
    """The one-line error for a write of `path` that ran out of space (or, `ahead`, would): what it needs, what is
    left, and where."""
    path = Path(path)
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    if needed is not None:
        need = f"needs about {human_bytes(needed)}, "
    elif written:
        need = f"needs more than the {human_bytes(written)} it wrote before the disk filled, "
    else:
        need = ""
    problem = "not enough space on device" if ahead else "no space left on device"
    return DiskFullError(f"{path}: {problem}: {need}{human_bytes(free)} free in {folder}; free some space and rerun")


def require_space(path: str | os.PathLike, needed: int) -> None:
    """Fail before writing `path` if its file system has less than `needed` bytes free: a writer that meets a full
    disk half-way may not clean up after itself (HDF5 keeps a file it cannot flush open until the process ends)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(path.parent).free < needed:
        raise disk_full_error(path, needed, ahead=True)


def _size(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


@contextmanager
def atomic_path(path: str | os.PathLike, *, needed: int | None = None, sweep: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write `path` to (file or folder); rename it into place on success.

    The temporary name keeps the final name as its suffix, so writers that check the extension (Keras' `.keras`,
    `.weights.h5`) accept it. `needed`: the bytes the write needs, named if the disk fills. `sweep`: first remove
    stale temporaries beside `path` (a caller writing thousands of files into one folder sweeps it once instead).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        remove_stale_partials(path)
    tmp = partial_path(path)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # os.replace cannot replace a non-empty folder
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error):
            raise
        written = _size(tmp)
        _remove(tmp)
        raise disk_full_error(path, needed, written) from None
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


@contextmanager
def staging_folder(path: str | os.PathLike) -> Iterator[Path]:
    """An empty temporary folder named as a temporary of `path`, removed afterwards: for writers that put their own
    temporary files beside the file they write (Keras' `model.save` may), so that a kill leaves nothing the next
    write of `path` does not remove."""
    folder = partial_path(path, "staging-")
    _remove(folder)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        _remove(folder)
