"""The model files params name, by content: what makes `pretrained` rerun when a file is retrained in place.

`model.source` (or `model.weights`) may name a file. A file is no DVC dependency of its own (its path is a param,
and a dvc.yaml dependency cannot depend on a param's kind), so the `model_listing` stage writes, on every `dvc repro`,
one `key, path, size, md5` row per file named; `pretrained` depends on that listing, which stays byte-identical while
the bytes do. A file's MD5 is remembered with its size, modification time and inode (as DVC's own state does), so
VGG16's 528 MB are hashed once per change, not once per repro.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vggbn import VggbnError
from vggbn.storage.hashing import file_md5
from vggbn.storage.tables import write_json, write_text

HEADER = "key\tpath\tsize\tmd5"
NOT_FILES = {"model.source": ("demo", "vgg16"), "model.weights": (None, "imagenet", "none")}


class ModelFileError(VggbnError):
    pass


def named_files(source: str, weights: str | None) -> dict[str, str]:
    """{param key: path} for each of `model.source` and `model.weights` that names a file."""
    named = {"model.source": source, "model.weights": weights}
    return {key: value for key, value in named.items() if value not in NOT_FILES[key]}


def _stamp(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def list_model_files(*, source: str, weights: str | None, out: str | os.PathLike, hashes: str | os.PathLike) -> dict:
    """Write `out` (the TSV above) for the files the params name; `hashes` (a JSON file outside DVC's outputs)
    remembers each file's MD5 with its stat. Returns the counts of files listed, hashed and reused."""
    hashes = Path(hashes)
    try:
        known = json.loads(hashes.read_text())
    except (OSError, ValueError):
        known = {}  # first run, or a damaged memo: hash again
    rows, hashed = [HEADER], 0
    for key, path in named_files(source, weights).items():
        try:
            info = os.stat(path)
        except OSError as error:
            raise ModelFileError(f"{path}: {key} names no readable file ({error.strerror})") from None
        memo = known.get(os.path.realpath(path))
        if memo is None or memo["stamp"] != _stamp(info):
            md5 = file_md5(path)
            hashed += 1
            memo = known[os.path.realpath(path)] = {"stamp": _stamp(os.stat(path)), "md5": md5}
        rows.append(f"{key}\t{path}\t{info.st_size}\t{memo['md5']}")
    write_text(out, "\n".join(rows) + "\n")
    if hashed:
        hashes.parent.mkdir(parents=True, exist_ok=True)
        write_json(hashes, known)
    return {"files": len(rows) - 1, "hashed": hashed, "reused": len(rows) - 1 - hashed}
