"""The sample folder's format, written by the sample stage and read by every stage after it.

- `train.tsv`, `valid.tsv`: header `path, label, md5`; label is the class index, md5 the hash of the file's bytes
  (later stages reuse cached features by path and hash). Sorted by path.
- `classes.txt`: one class name per line; the line number (from 0) is the class index.
- `rejected.tsv`: header `path, reason`: the candidates, in rank order up to the last one sampled, that cannot be
  used. Sorted by path. A name a TSV row cannot hold (a tab, a line break, bytes that are not UTF-8) is written as
  a bash `$'...'` word, which pastes into a shell as that very name.

Nothing here imports TensorFlow or Pillow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

from vggbn import VggbnError
from vggbn.storage.atomic import atomic_path
from vggbn.storage.tables import read_tsv

MANIFEST_HEADER = "path\tlabel\tmd5"
REJECTED_HEADER = "path\treason"
CLASSES_FILE = "classes.txt"


class SampleError(VggbnError):
    pass


class Row(NamedTuple):
    path: str
    label: int
    md5: str


class Manifest(NamedTuple):
    paths: list[str]
    labels: list[int]
    md5s: list[str]


@dataclass(frozen=True)
class Sample:
    """A sample folder's content: manifests sorted by path, class names in index order, rejections sorted by path."""
    classes: list[str]
    train: list[Row]
    valid: list[Row]
    rejected: list[tuple[str, str]]

    @property
    def metrics(self) -> dict:
        return {"train_images": len(self.train), "valid_images": len(self.valid), "rejected": len(self.rejected)}


def write_sample(out: str | os.PathLike, sample: Sample) -> None:
    """Write the sample folder (train.tsv, valid.tsv, classes.txt, rejected.tsv) atomically."""
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for split, rows in (("train", sample.train), ("valid", sample.valid)):
            _write_lines(tmp / f"{split}.tsv", [MANIFEST_HEADER, *(f"{r.path}\t{r.label}\t{r.md5}" for r in rows)])
        _write_lines(tmp / CLASSES_FILE, sample.classes)
        _write_lines(tmp / "rejected.tsv", [REJECTED_HEADER, *(f"{p}\t{reason}" for p, reason in sample.rejected)])


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as file:
        for line in lines:
            file.write(line + "\n")


def read_manifest(path: str | os.PathLike) -> Manifest:
    """A manifest written by `write_sample`: paths (relative to the data root), class indices and md5s."""
    manifest = Manifest([], [], [])
    for path_, label, md5 in read_tsv(path, header=MANIFEST_HEADER, what="sample manifest", error=SampleError):
        manifest.paths.append(path_)
        manifest.labels.append(int(label))
        manifest.md5s.append(md5)
    return manifest


def read_split(sample_dir: str | os.PathLike, split: str) -> Manifest:
    """The manifest of `split` (train or valid) in a sample folder."""
    return read_manifest(Path(sample_dir) / f"{split}.tsv")


def read_classes(path: str | os.PathLike) -> list[str]:
    """Class names in index order from a `classes.txt` file, or from the sample folder holding one."""
    path = Path(path)
    path = path / CLASSES_FILE if path.is_dir() else path
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SampleError(f"{path}: class names file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SampleError(f"{path}: cannot read class names: {error}") from None
