"""A stage's previous output, read back from DVC's own cache, where `dvc.lock` says it is.

DVC deletes a stage's declared outputs before running it, but the previous run's output stays in DVC's cache under
the md5 that `dvc.lock` records for it (DVC 3: `<cache dir>/files/md5/<2 hex digits>/<30 more>`), whatever
`cache.type` links it into the workspace (copy, reflink, hardlink or symlink). Stages that reuse rows of their
previous output (conv_features, transfer) read them from there instead of keeping a second copy of their own.

DVC 3.67 trusts a read-only object in its cache without hashing it again (`dvc_data`'s `LocalHashFileDB.check`),
and when a stage's new output has the md5 of an object already cached, DVC keeps the cached object and, with the
default `cache.type` (reflink, copy), checks it out over the new output. So an object found corrupt is removed
from the cache (`CachedOutput.discard`): DVC's commit after the stage then stores the new, good output in its place.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from vggbn import compat

log = logging.getLogger(__name__)

LOCK_FILE = "dvc.lock"  # DVC runs a stage in the folder of its dvc.yaml, where dvc.lock is written too


@dataclass(frozen=True)
class CachedOutput:
    """The previous run's version of an output, as an object in DVC's cache."""
    out: str  # the output's path as dvc.lock names it
    path: Path  # the object in DVC's cache
    md5: str
    size: int | None  # bytes, as dvc.lock records them

    def discard(self, reason: str) -> None:
        """Remove the object from DVC's cache: it failed a check (`reason`), and DVC would check it out again."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        except OSError as error:
            log.warning("%s: DVC's cached copy of %s failed a check (%s) but cannot be removed (%s); remove it "
                        "before `dvc checkout`", self.path, self.out, reason, error.strerror)
            return
        log.warning("%s: removed DVC's cached copy of %s: %s; DVC stores the new output in its place",
                    self.path, self.out, reason)


def recorded_outputs(lock_file: str | os.PathLike = LOCK_FILE) -> dict[str, dict]:
    """Every stage output `dvc.lock` records with an md5, by its normalized path: {path: its lock entry (md5, size,
    hash, ...)}. An unreadable lock file records nothing (with a warning: no previous output can be reused)."""
    try:
        stages = yaml.safe_load(Path(lock_file).read_text(encoding="utf-8"))["stages"]
        return {os.path.normpath(out["path"]): out for stage in stages.values() for out in stage.get("outs") or []
                if isinstance(out, dict) and out.get("path") and out.get("md5") is not None}
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError) as error:
        log.warning("%s: cannot read it (%s): no previous output to reuse", lock_file, error)
        return {}


def _lock_entry(name: str) -> dict | None:
    return recorded_outputs().get(os.path.normpath(name))


def _cache_path(md5: str, hash_name: str | None) -> Path | None:
    """Where DVC's cache keeps the object `md5`, by DVC's own configuration (all its levels, and the cache folder
    `dvc exp run` points a temporary workspace at)."""
    try:
        return compat.dvc_cache_file(md5, legacy=hash_name != "md5")  # DVC 2 entries have no `hash`
    except compat.InternalMoved:
        raise  # not a project's state but an untested DVC: silently recomputing every run is no answer
    except Exception as error:  # noqa: BLE001 - reuse is an optimization: any failure means computing afresh
        log.warning("cannot open DVC's cache (%s): no previous output to reuse", str(error).splitlines()[0])
        return None


def previous_output(out_path: str | os.PathLike) -> CachedOutput | None:
    """The version of `out_path` (relative to the working folder, as dvc.yaml names outputs) that `dvc.lock`
    records, if DVC's cache holds it; None outside a DVC project, for an output DVC has not committed, or when the
    object is not in the cache (e.g. not pulled)."""
    if not Path(LOCK_FILE).is_file():
        return None
    name = Path(os.path.relpath(out_path)).as_posix()
    entry = _lock_entry(name)
    if entry is None:
        return None
    path = _cache_path(str(entry["md5"]), entry.get("hash"))
    if path is None:
        return None
    if not path.is_file():
        # Debug only: the normal case in a fresh clone, and the stage's summary says "0 reused" anyway.
        log.debug("%s: the previous version (md5 %s) is not in DVC's cache: nothing to reuse", name, entry["md5"])
        return None
    size = entry.get("size")
    return CachedOutput(name, path, str(entry["md5"]), int(size) if size is not None else None)
