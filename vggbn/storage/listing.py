"""List the image folder cheaply, so that DVC never has to track it: one sorted `path, size, kind` row per entry.

The image folder (ImageNet layout, 1.28M files) is deliberately no DVC dependency: DVC would stat and hash every
file on each `dvc status`. Instead the `listing` stage scans it on every `dvc repro` (a few µs per file) and writes
a listing that is byte-identical while the folder is unchanged, so nothing downstream reruns. It records sizes,
never modification times (those change on copy and checkout).

The listing is a UTF-8 TSV::

    path	size	kind
    LOC_val_solution.csv	2630291	labels md5=4d1c...      (only when data.valid_labels is set; always first)
    train/	0	dir
    train/n01440764/	0	dir
    train/n01440764/n01440764_10026.JPEG	13697	file
    train/n01440764/alias.JPEG	13697	link

`path` is relative to the data root with POSIX separators; folders end with `/`. After the optional labels row,
rows are sorted by path (Python string order), and only `train/` and `valid/` (or `val/`, torchvision's and timm's
name for it; rows then start with `val/`) are scanned. Kinds:

- `file`: a regular file; `size` is its size in bytes.
- `dir`: a folder (`size` 0); listed so that an empty class folder is still seen.
- `link`: a symbolic link, never followed while scanning (a linked folder is not entered); `size` is the size of
  what it points to when that is a regular file, else 0. The sample stage accepts a link only when it resolves to a
  regular file inside the data root.
- `badname`: a file or folder whose path a TSV line cannot hold (a tab, a line break, or bytes that are not UTF-8);
  `path` is then written as the body of a bash `$'...'` string (`train/a/\\xff\\xfe.png`: backslash escapes for
  those characters, the original bytes of a name that is not UTF-8, a backslash and a quote), so `shell_word`
  makes it a word a user can paste into a shell. The sample stage rejects such files with a reason, and such a
  class folder is an error.
- `labels md5=<hex>`: the CSV named by data.valid_labels, with a hash of its content, so that editing the labels
  reruns the sample stage.

Names starting with `.` (`.DS_Store`, `.ipynb_checkpoints/`) are skipped with everything below them, as are
sockets, pipes and devices.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from vggbn import VggbnError
from vggbn import console
from vggbn.storage.atomic import atomic_path
from vggbn.storage.hashing import file_md5
from vggbn.storage.tables import read_tsv

HEADER = "path\tsize\tkind"
SPLITS = ("train", "valid")
VALID_FOLDERS = ("valid", "val")  # the validation split's folder: ours, or torchvision's and timm's name


def split_of(folder: str) -> str | None:
    """The split a listing row's first path component belongs to (`val` is `valid`); None for other rows."""
    return "valid" if folder in VALID_FOLDERS else "train" if folder == "train" else None


def split_folders(root: str | os.PathLike) -> dict[str, str]:
    """{split: its folder name under `root`}: `valid/`, or `val/` when only that exists. Both is an error (which
    would a user mean?); neither gives `valid` (the missing-folder error names it)."""
    root = Path(root)
    present = [name for name in VALID_FOLDERS if (root / name).is_dir()]
    if len(present) > 1:
        raise ListingError(f"{root}: holds both valid/ and val/: keep one validation folder (or rename the other)")
    return {"train": "train", "valid": present[0] if present else "valid"}
FILE, DIR, LINK, BADNAME, LABELS = "file", "dir", "link", "badname", "labels"

# Characters a TSV row cannot hold: tab, everything str.splitlines() splits on, and the lone surrogates that stand
# for undecodable bytes in a file name.
_UNWRITABLE = re.compile("[\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\ud800-\udfff]")


class ListingError(VggbnError):
    pass


class Entry(NamedTuple):
    path: str  # relative to the data root, POSIX separators; folders end with "/"
    size: int
    kind: str  # file, dir, link, badname, or "labels md5=<hex>"


def _escape(path: str) -> str:
    """`path` as the body of a bash `$'...'` string: backslash escapes for a backslash, a quote and every character
    a TSV row cannot hold, with the original byte (`\\xff`) for each byte of the name that is not UTF-8."""
    def escaped(match: re.Match) -> str:
        char = match.group()
        if char in "\\'":
            return "\\" + char
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the undecodable byte code - 0xDC00
            return f"\\x{code - 0xDC00:02x}"
        return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"
    return re.sub(f"[\\\\'{_UNWRITABLE.pattern[1:-1]}]", escaped, path)


def shell_word(path: str) -> str:
    """A `badname` row's path as a word to paste into bash (or zsh, ksh): `$'train/a/\\xff.png'`."""
    return f"$'{path}'"


def _walk(folder: str, prefix: str, bad: bool, on_entry: Callable[[], None] | None = None) -> Iterator[str]:
    """TSV rows for everything below `folder` (whose real path relative to the root is `prefix`), in path order.

    Each folder's entries are sorted by name, with "/" appended to folder names: a depth-first walk in that order
    yields exactly the sorted order of the full paths, so only one folder is held in memory at a time.
    `on_entry` is called after each of `folder`'s own entries is listed, everything below it included.
    """
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except OSError as error:
        raise ListingError(f"{folder}: cannot read folder: {error.strerror}") from None
    keyed = []
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue  # vanished while scanning
        keyed.append((entry.name + "/" if is_dir else entry.name, is_dir, entry))
    keyed.sort(key=lambda item: item[0])
    rows = []
    for key, is_dir, entry in keyed:
        name_bad = bad or _UNWRITABLE.search(entry.name) is not None
        shown = _escape(prefix + key) if name_bad else prefix + key
        if is_dir:
            if rows:
                yield "".join(rows)
                rows = []
            yield f"{shown}\t0\t{BADNAME if name_bad else DIR}\n"
            yield from _walk(entry.path, prefix + key, name_bad)
        else:
            row = _file_row(entry, shown, name_bad)
            if row is not None:
                rows.append(row)
        if on_entry is not None:
            on_entry()
    if rows:
        yield "".join(rows)


def _file_row(entry: os.DirEntry, shown: str, name_bad: bool) -> str | None:
    """The row of a file or link; None for a socket, pipe or device, or an entry gone while scanning."""
    try:
        if entry.is_symlink():
            kind, size = LINK, _target_size(entry.path)
        else:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                return None
            kind, size = FILE, info.st_size
    except FileNotFoundError:
        return None
    return f"{shown}\t{size}\t{BADNAME if name_bad else kind}\n"


def _target_size(path: str) -> int:
    try:
        info = os.stat(path)
    except OSError:
        return 0  # dangling, or a loop
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def scan(root: str | os.PathLike, *, valid_labels: str | None = None) -> Iterator[str]:
    """The listing's rows, streamed in order as chunks of TSV lines (no header; `write_listing` adds it).

    Args:
        root: the data root, holding `train/<class>/<file>` and `valid/<class>/<file>`.
        valid_labels: None for class folders under `valid/`; or the path, relative to the root, of the CSV that
            labels a flat `valid/` folder (it must exist; its content hash becomes the first row).

    Checks the layout before yielding anything, raising ListingError naming the path.
    """
    root = Path(root)
    if not root.is_dir():
        raise ListingError(f"{root}: data root {'is not a folder' if root.exists() else 'does not exist'}")
    folders = split_folders(root)
    for split in SPLITS:
        if not (root / folders[split]).is_dir():
            layout = (f"{root}/valid/<file> labelled by {valid_labels}" if split == "valid" and valid_labels
                      else f"{root}/{split}/<class>/<file>")
            raise ListingError(f"{root / split}: missing {split} folder (expected {layout})")
    labels_row = None
    if valid_labels is not None:
        csv_path = root / valid_labels
        if not csv_path.is_file():
            raise ListingError(f"{csv_path}: data.valid_labels file does not exist")
        try:
            size, md5 = csv_path.stat().st_size, file_md5(csv_path)
        except OSError as error:
            raise ListingError(f"{csv_path}: cannot read data.valid_labels: {error.strerror}") from None
        name = Path(valid_labels).as_posix()
        labels_row = f"{_escape(name) if _UNWRITABLE.search(name) else name}\t{size}\t{LABELS} md5={md5}\n"

    def rows() -> Iterator[str]:
        if labels_row:
            yield labels_row
        # Progress over the splits' own entries (class folders, or a flat valid folder's files): cheap to count.
        total = sum(_visible_entries(root / folders[split]) for split in SPLITS)
        with console.progress(total, f"listing {root}", "entry") as bar:
            for split in SPLITS:  # "train/" < "val/" < "valid/"
                yield f"{folders[split]}/\t0\t{DIR}\n"
                yield from _walk(str(root / folders[split]), f"{folders[split]}/", False, on_entry=bar.update)

    return rows()


def _visible_entries(folder: Path) -> int:
    try:
        with os.scandir(folder) as it:
            return sum(not entry.name.startswith(".") for entry in it)
    except OSError:
        return 0  # _walk reports it


def write_listing(out: str | os.PathLike, rows: Iterable[str]) -> dict[str, int]:
    """Write the header and `rows` (from `scan`) to `out` atomically; return the number of rows, and of rows of
    each kind (`files`, `folders`, `links`, `bad_names`)."""
    counts = dict.fromkeys(("rows", "files", "folders", "links", "bad_names"), 0)
    kinds = {"files": f"\t{FILE}\n", "folders": f"\t{DIR}\n", "links": f"\t{LINK}\n", "bad_names": f"\t{BADNAME}\n"}
    with atomic_path(out) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as file:
            file.write(HEADER + "\n")
            for chunk in rows:
                file.write(chunk)
                counts["rows"] += chunk.count("\n")
                for key, ending in kinds.items():
                    counts[key] += chunk.count(ending)
    return counts


def list_folder(*, root: str | os.PathLike, out: str | os.PathLike, valid_labels: str | None = None) -> dict:
    """Scan `root` and write its listing to `out`; the root and the number of rows of each kind (the listing
    stages' summary: they write no metrics file)."""
    return {"root": str(root), **write_listing(out, scan(root, valid_labels=valid_labels))}


def read_listing(path: str | os.PathLike) -> Iterator[Entry]:
    """The listing's rows as Entry tuples, in file order; ListingError naming the file and line if malformed."""
    for path_, size, kind in read_tsv(path, header=HEADER, what="listing", error=ListingError):
        yield Entry(path_, int(size), kind)
