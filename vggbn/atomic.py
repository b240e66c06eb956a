"""Write outputs under a temporary name in the same folder and rename them when complete.

A killed stage then never leaves a file that looks finished: at worst a `.partial-*` sibling, which the next
write of the same output removes. This module decides no byte of any output (see `vggbn.files` for that), so it is
no stage's DVC dependency.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PARTIAL_PREFIX = ".partial-"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_stale_partials(path: Path) -> None:
    """Remove what killed writers of `path` left behind."""
    if path.parent.is_dir():
        for stale in path.parent.glob(f"{PARTIAL_PREFIX}*-{path.name}"):
            _remove(stale)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write `path` to (file or folder); rename it into place on success.

    The temporary name keeps the final name as its suffix, so writers that check the extension
    (Keras' `.keras`, `.weights.h5`) accept it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = path.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{path.name}")
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # os.replace cannot replace a non-empty folder
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
