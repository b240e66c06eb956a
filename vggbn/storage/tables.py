"""Small text files every stage reads or writes: three-column TSV tables (listings, manifests), and JSON metrics and
CSV plot tables written atomically and byte-reproducibly. numpy-free and TensorFlow-free."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from vggbn import VggbnError
from vggbn.storage.atomic import atomic_path


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


class PlotTable(NamedTuple):
    """A plot table: column names and rows, written as one CSV file."""
    header: tuple[str, ...]
    rows: list
