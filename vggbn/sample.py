"""Draw a stable, seeded sample of the listed images, check that each one decodes, and write the manifests.

The sample never copies images: its manifests name them by path relative to the data root. Files are ranked by a
seeded hash of their path, and the first usable ones in rank order are taken, so adding or removing a few files
changes the sample by about as many entries, and a rejected file is replaced by the next one in rank.

Output folder:

- `train.tsv`, `valid.tsv`: header `path, label, md5`; label is the class index, md5 the hash of the file's bytes
  (later stages reuse cached features by path and hash). Sorted by path.
- `classes.txt`: one class name per line; the line number (from 0) is the class index.
- `rejected.tsv`: header `path, reason`: the candidates, in rank order up to the last one sampled, that cannot be
  used. Sorted by path.

Nothing here imports TensorFlow; images are checked with Pillow, accepting what `tf.io.decode_image` reads.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import stat
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

from PIL import Image, UnidentifiedImageError

from vggbn import VggbnError
from vggbn.atomic import atomic_path
from vggbn.listing import BADNAME, DIR, LINK, LABELS, Entry, read_listing

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # what tf.io.decode_image is given, by name
FORMATS = ("JPEG", "PNG", "BMP", "GIF")  # what it decodes, as Pillow names the detected format
_PILLOW_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "BMP": "BMP", "GIF": "GIF"}  # MPO: a camera JPEG
MANIFEST_HEADER = "path\tlabel\tmd5"
REJECTED_HEADER = "path\treason"
STRICT_SHOWN = 5  # rejections named in the strict-mode error before "and N more"


class SampleError(VggbnError):
    pass


class Checked(NamedTuple):
    reason: str | None  # why the file cannot be used; None if it can
    md5: str | None  # hex digest of the bytes that were decoded, when usable


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
    """What `build_sample` found: manifests sorted by path, class names in index order, rejections sorted by path."""
    classes: list[str]
    train: list[Row]
    valid: list[Row]
    rejected: list[tuple[str, str]]

    @property
    def metrics(self) -> dict:
        return {"train_images": len(self.train), "valid_images": len(self.valid), "rejected": len(self.rejected)}


def is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def rank(paths: Iterable[str], seed: int) -> list[str]:
    """`paths` ordered by a seeded hash of each path alone, so the order of the others survives adding or
    removing one."""
    return sorted(paths, key=lambda p: (hashlib.sha256(f"{seed}\0{p}".encode("utf-8")).digest(), p))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:120]


def _bmp_problem(data: bytes, mode: str) -> str | None:
    """TensorFlow's BMP decoder reads uncompressed 8-, 24- and 32-bit files and ignores a palette."""
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return "BMP with an old (OS/2) header, which TensorFlow does not decode"
    bits, compression = int.from_bytes(data[28:30], "little"), int.from_bytes(data[30:34], "little")
    if bits not in (8, 24, 32) or compression not in (0, 3):
        return f"BMP with {bits} bits per pixel{' (compressed)' if compression not in (0, 3) else ''}, " \
               "which TensorFlow does not decode"
    if mode == "P":
        return "palette BMP, which TensorFlow decodes as gray palette indices"
    return None


def check_image(path: str | os.PathLike) -> Checked:
    """Read and fully decode one file; return why it cannot be used (or None) and the md5 of its bytes.

    Accepted: JPEG (grayscale, CMYK, MPO), PNG (palette, RGBA, 16-bit), BMP, GIF, whatever the file is named.
    Rejected: a file that is not regular, empty, unreadable, not an image, another format, truncated or corrupt,
    or with more pixels than Pillow's `Image.MAX_IMAGE_PIXELS` (the decompression-bomb limit; None: no limit).
    Pillow warns of a bomb before this rejects it: callers that check many files silence that warning
    (`build_sample` does).
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return Checked("a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file", None)
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        return Checked(f"unreadable: {error.strerror or _one_line(error)}", None)
    if not data:
        return Checked("empty file", None)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        return Checked(f"more pixels than the decompression-bomb limit of {Image.MAX_IMAGE_PIXELS}", None)
    except UnidentifiedImageError:
        return Checked("not an image", None)
    except Exception as error:  # Pillow's plugins raise many types on a corrupt header
        return Checked(f"corrupt header: {_one_line(error)}", None)
    with image:
        fmt = _PILLOW_FORMATS.get(image.format)
        if fmt is None:
            return Checked(f"{image.format} image, not one of {', '.join(FORMATS)}", None)
        limit = Image.MAX_IMAGE_PIXELS
        width, height = image.size
        if limit is not None and width * height > limit:
            return Checked(f"{width}x{height} pixels, more than the decompression-bomb limit of {limit}", None)
        if fmt == "BMP" and (problem := _bmp_problem(data, image.mode)):
            return Checked(problem, None)
        try:
            image.load()
        except OSError as error:
            return Checked("truncated" if "truncated" in str(error) else f"corrupt: {_one_line(error)}", None)
        except Exception as error:
            return Checked(f"corrupt: {_one_line(error)}", None)
    return Checked(None, hashlib.md5(data).hexdigest())


class _Candidate(NamedTuple):
    path: str  # relative to the root
    label: int | None  # None: rejected before decoding, see reason
    link: bool
    reason: str | None = None


def _examine(root: Path, inside: Sequence[str], candidate: _Candidate) -> Checked:
    if candidate.reason is not None:
        return Checked(candidate.reason, None)
    path = root / candidate.path
    if candidate.link:
        target = os.path.realpath(path)
        if not any(target == top or target.startswith(top + os.sep) for top in inside):
            return Checked("symlink pointing outside the data root", None)
        if os.path.isdir(target):
            return Checked("symlinked folder, which is not followed", None)
        if not os.path.exists(target):
            return Checked("broken symlink", None)
    return check_image(path)


def _in_order(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, ahead: int) -> Iterator[tuple]:
    """(item, fn(item)) in the order of `items`, computed up to `ahead` items in advance on `pool`.

    Stopping early wastes at most `ahead` calls, so checking the first k usable of a million files costs about k.
    """
    items, pending = iter(items), deque()
    try:
        while True:
            while len(pending) < ahead:
                item = next(items, None)
                if item is None:
                    break
                pending.append((item, pool.submit(fn, item)))
            if not pending:
                return
            item, future = pending.popleft()
            yield item, future.result()
    finally:
        for _, future in pending:
            future.cancel()


def _read_valid_labels(csv_path: Path) -> dict[str, str]:
    """ImageId -> class of a labels CSV (ImageNet Kaggle's LOC_val_solution.csv): the first token of
    PredictionString. An id with conflicting rows maps to ""."""
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as file:
            reader = csv.DictReader(file)
            if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
                raise SampleError(f"{csv_path}: data.valid_labels: expected the columns ImageId,PredictionString, "
                                  f"got {','.join(reader.fieldnames or ())}")
            labels: dict[str, str] = {}
            for row in reader:
                image_id, tokens = row["ImageId"] or "", (row["PredictionString"] or "").split()
                label = tokens[0] if tokens else ""
                labels[image_id] = label if labels.get(image_id, label) == label else ""
    except OSError as error:
        raise SampleError(f"{csv_path}: cannot read data.valid_labels: {error.strerror}") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise SampleError(f"{csv_path}: data.valid_labels is not a readable CSV: {_one_line(error)}") from None
    return labels


def _class_index(root: Path, folders: list[str], class_order: Sequence[str] | None) -> tuple[list[str], dict]:
    """Class names in index order, and folder name -> index."""
    if class_order is None:
        classes = sorted(folders)
    else:
        classes = list(class_order)
        if len(set(classes)) != len(classes):
            raise SampleError("class_order: names a class more than once")
        known = set(classes)
        for name in sorted(folders):
            if name not in known:
                raise SampleError(f"{root / 'train' / name}: class folder is not in the given class order "
                                  f"({len(classes)} classes)")
    return classes, {name: i for i, name in enumerate(classes)}


def _candidates(root: Path, entries: Iterable[Entry], valid_labels: str | None, class_order) -> tuple:
    """Split the listing into class names, class index and per-split candidates (image files only)."""
    folders = {"train": [], "valid": []}
    files = {"train": [], "valid": []}
    for entry in entries:
        if entry.kind.split(" ")[0] == LABELS:
            continue
        parts = entry.path.rstrip("/").split("/")
        if parts[0] not in files or len(parts) < 2:
            continue
        if entry.kind == DIR:
            if len(parts) == 2:
                folders[parts[0]].append(parts[1])
        elif is_image_name(entry.path) or entry.kind == LINK:
            files[parts[0]].append(entry)
    for split, names in folders.items():
        if split == "train" or valid_labels is None:
            for name in names:
                if "\\" in name and any(e.kind == BADNAME and e.path.startswith(f"{split}/{name}/")
                                        for e in files[split]):
                    raise SampleError(f"{root / split / name}: class folder name holds a tab, a line break or "
                                      "bytes that are not UTF-8")
    classes, index = _class_index(root, folders["train"], class_order)
    train_folders = set(folders["train"])
    if valid_labels is None:
        for name in sorted(folders["valid"]):
            if name not in train_folders:
                raise SampleError(f"{root / 'valid' / name}: validation class folder has no counterpart in "
                                  f"{root / 'train'}")
        csv_labels = None
    else:
        csv_labels = _read_valid_labels(root / valid_labels)

    candidates = {}
    for split, split_files in files.items():
        found = []
        for entry in split_files:
            rel = entry.path[len(split) + 1:]
            link = entry.kind == LINK
            if link and not is_image_name(entry.path):  # a symlinked folder, or a link to some other file
                if os.path.isdir(root / entry.path):
                    found.append(_Candidate(entry.path, None, link, "symlinked folder, which is not followed"))
                continue
            if entry.kind == BADNAME:
                found.append(_Candidate(entry.path, None, link,
                                        "name holds a tab, a line break or bytes that are not UTF-8"))
            elif split == "valid" and csv_labels is not None:
                label = csv_labels.get(rel.rsplit(".", 1)[0])
                if label is None:
                    found.append(_Candidate(entry.path, None, link, f"no row in {valid_labels}"))
                elif label not in train_folders:
                    why = "conflicting rows" if label == "" else f"class {label!r} is not a train class folder"
                    found.append(_Candidate(entry.path, None, link, f"{why} in {valid_labels}"))
                else:
                    found.append(_Candidate(entry.path, index[label], link))
            elif "/" not in rel:
                found.append(_Candidate(entry.path, None, link, "not inside a class folder"))
            else:
                found.append(_Candidate(entry.path, index[rel.split("/", 1)[0]], link))
        candidates[split] = found
    class_folders = {"train": sorted(folders["train"]),
                     "valid": sorted(folders["valid"]) if valid_labels is None else []}
    return classes, index, candidates, class_folders


def _draw(split: str, ranked: list[_Candidate], want: int | None, examine: Callable, pool, ahead: int,
          ) -> tuple[list[Row], list[tuple[str, str]], set[str]]:
    """The first `want` usable candidates in rank order (all if None), and the rejections met on the way."""
    want = len(ranked) if want is None else want
    if want > len(ranked):
        raise SampleError(f"sample.{split}: {want} images requested, but {split} holds only {len(ranked)} image files")
    rows, rejected, checked = [], [], set()
    if want == 0:
        return rows, rejected, checked
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety
        tqdm = None
    bar = tqdm(total=want, desc=f"checking {split} images", unit="img", disable=None) if tqdm else None
    for candidate, checked_result in _in_order(pool, examine, ranked, ahead):
        checked.add(candidate.path)
        if checked_result.reason is None:
            rows.append(Row(candidate.path, candidate.label, checked_result.md5))
            if bar:
                bar.update()
            if len(rows) == want:
                break
        else:
            rejected.append((candidate.path, checked_result.reason))
    if bar:
        bar.close()
    if len(rows) < want:
        raise SampleError(f"sample.{split}: {want} images requested, but {split} holds only {len(rows)} usable "
                          f"images ({len(rejected)} of {len(ranked)} image files rejected)")
    log.info("%s: sampled %d images, rejected %d", split, len(rows), len(rejected))
    return rows, rejected, checked


def _require_usable_image(root: Path, split: str, folders: list[str], rows: list[Row], ranked: list[_Candidate],
                          checked: set[str], examine: Callable, pool) -> None:
    """Error naming the first class folder of `split` with no usable image; unsampled folders are checked in rank
    order until one usable file turns up (usually the first)."""
    sampled = {row.path.split("/")[1] for row in rows}
    unchecked: dict[str, list[_Candidate]] = {name: [] for name in folders if name not in sampled}
    for candidate in ranked:
        parts = candidate.path.split("/")
        if len(parts) > 2 and parts[1] in unchecked and candidate.path not in checked:
            unchecked[parts[1]].append(candidate)
    pending = sorted(unchecked)
    while pending:
        results = list(pool.map(lambda name: next((True for c in unchecked[name] if examine(c).reason is None),
                                                  False), pending))
        for name, usable in zip(pending, results):
            if not usable:
                raise SampleError(f"{root / split / name}: class folder has no usable image")
        pending = []


def build_sample(*, entries: Iterable[Entry], root: str | os.PathLike, train: int | None = None,
                 valid: int | None = None, seed: int = 0, strict: bool = False, valid_labels: str | None = None,
                 class_order: Sequence[str] | None = None, workers: int | None = None) -> Sample:
    """Sample and check images from a listing (see `vggbn.listing`).

    Args:
        entries: the listing's rows, e.g. `read_listing("data/listing.tsv")`.
        root: the data root the listing's paths are relative to.
        train, valid: how many images to sample from each split; None: all usable ones. More than the split
            holds is an error naming the key (`sample.train`).
        seed: seed of the hash ranking.
        strict: True: any rejected file is an error instead of being replaced by the next in rank.
        valid_labels: None when `valid/` holds class folders; else the CSV (relative to the root) that labels a flat
            `valid/` folder: ImageId,PredictionString, the first token of PredictionString being the class.
        class_order: None: class index = position in the sorted train class folder names (Keras' order);
            else the list of all class names in index order (e.g. ImageNet's WordNet ids), which every train
            folder must be in.
        workers: threads decoding images (Pillow releases the GIL); None: one per CPU, at least 4.

    Raises SampleError naming the path or key on a layout problem, a class folder without a usable image, or too
    few usable images.
    """
    root = Path(root)
    classes, _, candidates, class_folders = _candidates(root, entries, valid_labels, class_order)
    inside = sorted({os.path.realpath(root), *(os.path.realpath(root / split) for split in ("train", "valid"))})

    def examine(candidate: _Candidate) -> Checked:
        return _examine(root, inside, candidate)

    workers = workers or max(4, os.cpu_count() or 1)
    drawn, rejected = {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_image rejects those images
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for split, want in (("train", train), ("valid", valid)):
                ranked = rank_candidates(candidates[split], seed)
                rows, split_rejected, checked = _draw(split, ranked, want, examine, pool, ahead=4 * workers)
                _require_usable_image(root, split, class_folders[split], rows, ranked, checked, examine, pool)
                drawn[split] = sorted(rows)
                rejected += split_rejected
    rejected.sort()
    if strict and rejected:
        shown = "; ".join(f"{path} ({reason})" for path, reason in rejected[:STRICT_SHOWN])
        more = f"; and {len(rejected) - STRICT_SHOWN} more" if len(rejected) > STRICT_SHOWN else ""
        raise SampleError(f"sample.strict: {len(rejected)} unusable image{'s' * (len(rejected) != 1)}: {shown}{more}")
    return Sample(classes=classes, train=drawn["train"], valid=drawn["valid"], rejected=rejected)


def rank_candidates(candidates: list[_Candidate], seed: int) -> list[_Candidate]:
    by_path = {c.path: c for c in candidates}
    return [by_path[p] for p in rank(by_path, seed)]


def write_sample(out: str | os.PathLike, sample: Sample) -> None:
    """Write the sample folder (train.tsv, valid.tsv, classes.txt, rejected.tsv) atomically."""
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for split, rows in (("train", sample.train), ("valid", sample.valid)):
            _write_lines(tmp / f"{split}.tsv", [MANIFEST_HEADER, *(f"{r.path}\t{r.label}\t{r.md5}" for r in rows)])
        _write_lines(tmp / "classes.txt", sample.classes)
        _write_lines(tmp / "rejected.tsv", [REJECTED_HEADER, *(f"{p}\t{reason}" for p, reason in sample.rejected)])


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as file:
        for line in lines:
            file.write(line + "\n")


def make_sample(*, listing: str | os.PathLike, out: str | os.PathLike, root: str | os.PathLike,
                train: int | None, valid: int | None, seed: int, strict: bool, valid_labels: str | None,
                class_order: Sequence[str] | None = None) -> dict:
    """The sample stage: read the listing, build the sample, write the folder `out`; return the metrics."""
    sample = build_sample(entries=read_listing(listing), root=root, train=train, valid=valid, seed=seed,
                          strict=strict, valid_labels=valid_labels, class_order=class_order)
    write_sample(out, sample)
    return sample.metrics


def read_manifest(path: str | os.PathLike) -> Manifest:
    """A manifest written by `write_sample`: paths (relative to the data root), class indices and md5s."""
    path = Path(path)
    manifest = Manifest([], [], [])
    try:
        with open(path, encoding="utf-8", newline="\n") as file:
            header = file.readline().rstrip("\n")
            if header != MANIFEST_HEADER:
                raise SampleError(f"{path}: not a sample manifest (expected the header {MANIFEST_HEADER!r})")
            for number, line in enumerate(file, start=2):
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 3 or not fields[1].isdigit():
                    raise SampleError(f"{path}:{number}: malformed manifest row (expected path, label, md5)")
                manifest.paths.append(fields[0])
                manifest.labels.append(int(fields[1]))
                manifest.md5s.append(fields[2])
    except OSError as error:
        raise SampleError(f"{path}: cannot read manifest: {error.strerror}") from None
    return manifest
