"""Small files every stage reads or writes: content hashes, three-column TSV tables, JSON metrics and CSV plot
tables (written atomically and byte-reproducibly), the result a stage hands back, work-folder recipe stamps, and
the digests that work in progress is checked against before it is reused.

A change here can change the bytes of every stage's outputs, so it is a DVC dependency of every stage that imports
it. numpy-free and TensorFlow-free.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence, Union

from vggbn import VggbnError
from vggbn.storage.atomic import atomic_path, remove_stale_partials

log = logging.getLogger(__name__)


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def bytes_digest(data) -> str:
    """A digest of `data` (bytes, or any buffer such as a contiguous numpy array): SHA-256, cut to 128 bits (hex),
    what work files in progress and reused feature chunks are checked against. SHA-256 because CPUs hash it in
    hardware (several times BLAKE2b's speed on this project's machines)."""
    return hashlib.sha256(data).hexdigest()[:32]


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """`bytes_digest` of a file's bytes, read in blocks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            hasher.update(block)
    return hasher.hexdigest()[:32]


def read_tsv(path: str | os.PathLike, *, header: str, what: str, error: type[VggbnError]) -> Iterator[list[str]]:
    """Rows of a three-column TSV whose middle column is a count (a listing, a manifest), after checking the
    header; `error` naming the file, and the line if a row is malformed."""
    path = Path(path)
    try:
        file = open(path, encoding="utf-8", newline="\n")
    except OSError as problem:
        raise error(f"{path}: cannot read {what}: {problem.strerror}") from None
    with file:
        found = file.readline().rstrip("\n")
        if found != header:
            raise error(f"{path}: not a {what} (expected the header {header!r}, got {found[:60]!r})")
        columns = header.replace("\t", ", ")
        for number, line in enumerate(file, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3 or not fields[1].isdigit():
                raise error(f"{path}:{number}: malformed {what} row (expected {columns})")
            yield fields


def write_text(path: str | os.PathLike, text: str) -> None:
    data = text.encode("utf-8")
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write a small JSON document (metrics, summaries) with sorted keys, so reruns are byte-identical."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def csv_text(header: Sequence[str], rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: str | os.PathLike, header: Sequence[str], rows) -> None:
    """A small CSV table for DVC plots, written atomically."""
    write_text(path, csv_text(header, rows))


class Table(NamedTuple):
    """A plot table: column names and rows, written as one CSV file."""
    header: tuple[str, ...]
    rows: list


Plot = Union[Table, dict[str, Table]]  # one CSV file, or a folder of `<name>.csv` files (one plot each)


@dataclass
class StageResult:
    """What a stage's library entry (`run_<stage>`) hands back: its metrics and its plot tables by name."""
    metrics: dict
    plots: dict[str, Plot] = field(default_factory=dict)


def write_result(result: StageResult, *, metrics: str | os.PathLike | None = None,
                 plots: dict[str, str | os.PathLike] | None = None) -> None:
    """Write a stage's metrics (JSON) and each named plot to the path its dvc.yaml declares.

    A folder of tables is written whole or not at all; every plot named in `plots` must be in the result.
    Under a multi-worker strategy only the chief writes.
    """
    from vggbn.runner.launch import is_chief

    if not is_chief():
        return
    for name, path in (plots or {}).items():
        plot = result.plots[name]
        if isinstance(plot, Table):
            write_csv(path, plot.header, plot.rows)
            continue
        with atomic_path(path) as folder:
            folder.mkdir()
            for table_name, table in plot.items():
                (folder / f"{table_name}.csv").write_text(csv_text(table.header, table.rows), encoding="utf-8")
    if metrics is not None:
        write_json(metrics, result.metrics)


def prepare_work(work_dir: str | os.PathLike, recipe: dict, stale: Sequence[str]) -> bool:
    """Keep a work folder's resumable work only if it was made by the same `recipe`; return whether it was kept.

    Long stages keep work in progress (chunks, checkpoints) under a work folder, stamped with the recipe (inputs'
    hashes and params) that made it. Work of another recipe (the files matching the `stale` glob patterns) is
    removed before the folder is stamped anew, so a kill in between never pairs old work with a new stamp.
    """
    work_dir = Path(work_dir)
    remove_stale_partials(work_dir, everything=True)  # only this stage writes here, one run at a time
    stamp, text = work_dir / "recipe.json", json.dumps(recipe, sort_keys=True)
    if stamp.is_file() and stamp.read_bytes() == text.encode():
        return True
    dropped = [child for pattern in stale for child in work_dir.glob(pattern)]
    if dropped:
        log.info("%s: dropping %d files of work in progress made by another recipe", work_dir, len(dropped))
    for child in dropped:
        child.unlink()
    work_dir.mkdir(parents=True, exist_ok=True)
    write_text(stamp, text)
    return False
