"""Draw a stable, seeded sample of the listed images and check that each one decodes (the sample stage writes the
manifests).

The sample never copies images: its manifests name them by path relative to the data root. Files are ranked by a
seeded hash of their path, and the first usable ones in rank order are taken, so adding or removing a few files
changes the sample by about as many entries, and a rejected file is replaced by the next one in rank.

The output folder's format (manifests, class names, rejections) is `vggbn.storage.manifest`'s.

Nothing here imports TensorFlow; images are checked with Pillow, accepting what `tf.io.decode_image` reads.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import logging
import os
import stat
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

from PIL import Image, UnidentifiedImageError

from vggbn import console
from vggbn.storage.listing import BADNAME, LINK, Entry, shell_word, split_folders, split_of
from vggbn.storage.manifest import Row, Sample, SampleError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # what tf.io.decode_image is given, by name
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")  # what it decodes, as Pillow names the detected format
# MPO: a camera JPEG
_PILLOW_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "BMP": "BMP", "GIF": "GIF", "WEBP": "WEBP"}
# Photo formats the decoder refuses, by name: rejected with a reason (not skipped), so a folder of phone photos in
# HEIC is no silent empty class.
REFUSED_EXTENSIONS = (".heic", ".heif", ".avif", ".tif", ".tiff", ".jxl", ".jp2", ".dng", ".cr2", ".nef")
STRICT_SHOWN = 5  # rejections named in the strict-mode error before "and N more"


class Checked(NamedTuple):
    reason: str | None  # why the file cannot be used; None if it can
    md5: str | None  # hex digest of the bytes that were decoded, when usable


def is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def refused_format(path: str) -> str | None:
    """The reason a file named as a photo format the decoder refuses is rejected; None for other names."""
    if path.lower().endswith(REFUSED_EXTENSIONS):
        extension = path.rsplit(".", 1)[-1].upper()
        return f"{extension} file, which TensorFlow does not decode (convert it to JPEG or PNG)"
    return None


def _rank_key(path: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}\0{path}".encode("utf-8")).digest()


def rank(paths: Iterable[str], seed: int) -> list[str]:
    """`paths` ordered by a seeded hash of each path alone, so the order of the others survives adding or
    removing one."""
    return sorted(paths, key=lambda p: (_rank_key(p, seed), p))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:120]


def _decode_problem(error: Exception) -> str:
    return "truncated" if "truncated" in str(error).lower() else f"corrupt: {_one_line(error)}"


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
        return Checked(_decode_problem(error), None)
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
        except Exception as error:
            return Checked(_decode_problem(error), None)
    return Checked(None, hashlib.md5(data).hexdigest())


class _Candidate(NamedTuple):
    path: str  # relative to the root
    label: int | None
    link: bool
    reason: str | None = None  # why it cannot be used, when that is known without reading it


class _Layout(NamedTuple):
    classes: list[str]  # in index order
    candidates: dict[str, list[_Candidate]]  # split -> image files
    class_folders: dict[str, list[str]]  # split -> folders that must hold a usable image


def _examine(root: Path, inside: Sequence[str], candidate: _Candidate) -> Checked:
    if candidate.reason is not None:
        return Checked(candidate.reason, None)
    path = root / candidate.path
    if candidate.link:
        target = os.path.realpath(path)
        if not any(os.path.commonpath([top, target]) == top for top in inside):
            return Checked("symlink pointing outside the data root", None)
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
            for item in itertools.islice(items, ahead - len(pending)):
                pending.append((item, pool.submit(fn, item)))
            if not pending:
                return
            item, future = pending.popleft()
            yield item, future.result()
    finally:
        for _, future in pending:
            future.cancel()


def _read_valid_labels(csv_path: Path) -> dict[str, str]:
    """ImageId -> class, from a labels CSV like ImageNet Kaggle's LOC_val_solution.csv (the class is the first
    token of PredictionString); "" for an id whose rows disagree or name no class."""
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as file:
            reader = csv.DictReader(file)
            if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
                raise SampleError(f"{csv_path}: data.valid_labels: expected the columns ImageId,PredictionString, "
                                  f"got {','.join(reader.fieldnames or ())}")
            labels: dict[str, str] = {}
            for row in reader:
                tokens = (row["PredictionString"] or "").split()
                label = tokens[0] if tokens else ""
                image_id = row["ImageId"] or ""
                labels[image_id] = label if labels.get(image_id, label) == label else ""
    except OSError as error:
        raise SampleError(f"{csv_path}: cannot read data.valid_labels: {error.strerror}") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise SampleError(f"{csv_path}: data.valid_labels is not a readable CSV: {_one_line(error)}") from None
    return labels


def _class_index(root: Path, folders: list[str], class_order: Sequence[str] | None) -> list[str]:
    """Class names in index order: the sorted train folders, or `class_order`, which must hold them all."""
    if class_order is None:
        return sorted(folders)
    classes = list(class_order)
    if len(set(classes)) != len(classes):
        raise SampleError("class_order: names a class more than once")
    for name in sorted(set(folders) - set(classes)):
        raise SampleError(f"{root / 'train' / name}: class folder is not in the given class order "
                          f"({len(classes)} classes)")
    return classes


def _layout(root: Path, entries: Iterable[Entry], valid_labels: str | None,
            class_order: Sequence[str] | None) -> _Layout:
    """Classes and per-split candidates (files named like images, and symlinked folders) from the listing."""
    folders: dict[str, list[str]] = {"train": [], "valid": []}
    files: dict[str, list[Entry]] = {"train": [], "valid": []}
    for entry in entries:
        parts = entry.path.rstrip("/").split("/")
        split = split_of(parts[0])
        if split is None or len(parts) < 2:
            continue  # the labels row, the split folders themselves
        if entry.path.endswith("/"):
            if len(parts) == 2:
                if entry.kind == BADNAME and (split == "train" or valid_labels is None):
                    raise SampleError(f"{root}/{entry.path}: class folder name holds a tab, a line break or bytes "
                                      "that are not UTF-8")
                folders[split].append(parts[1])
        elif entry.kind == LINK or is_image_name(entry.path) or refused_format(entry.path):
            files[split].append(entry)
    classes = _class_index(root, folders["train"], class_order)
    index = {name: i for i, name in enumerate(classes)}
    train_folders = set(folders["train"])
    csv_labels = None
    if valid_labels is None:
        for name in sorted(set(folders["valid"]) - train_folders):
            raise SampleError(f"{root / 'valid' / name}: validation class folder has no counterpart in "
                              f"{root / 'train'}")
    else:
        csv_labels = _read_valid_labels(root / valid_labels)

    def candidate(entry: Entry) -> _Candidate | None:
        folder, rel = entry.path.split("/", 1)
        split, link = split_of(folder), entry.kind == LINK

        def rejected(reason: str) -> _Candidate:
            return _Candidate(entry.path, None, link, reason)

        if refused_format(entry.path):
            return rejected(refused_format(entry.path))
        if not is_image_name(entry.path):  # a link named otherwise: only a linked folder is worth a word
            return rejected("symlinked folder, which is not followed") if (root / entry.path).is_dir() else None
        if entry.kind == BADNAME:  # named as a word to paste into a shell
            return _Candidate(shell_word(entry.path), None, link, "name holds a tab, a line break or bytes that are "
                              "not UTF-8")
        if split == "valid" and csv_labels is not None:
            label = csv_labels.get(rel.rsplit(".", 1)[0])
            if label is None:
                return rejected(f"no row in {valid_labels}")
            if label not in train_folders:
                return rejected(f"class {label!r} in {valid_labels} is not a train class folder" if label
                                else f"no class or conflicting rows in {valid_labels}")
            return _Candidate(entry.path, index[label], link)
        if "/" not in rel:
            return rejected("not inside a class folder")
        return _Candidate(entry.path, index[rel.split("/", 1)[0]], link)

    candidates = {split: [c for c in map(candidate, split_files) if c is not None]
                  for split, split_files in files.items()}
    class_folders = {"train": sorted(train_folders), "valid": sorted(folders["valid"]) if valid_labels is None else []}
    return _Layout(classes, candidates, class_folders)


def _draw(split: str, ranked: list[_Candidate], want: int | None, examine: Callable, pool: ThreadPoolExecutor,
          ahead: int) -> tuple[list[Row], list[tuple[str, str]], set[str]]:
    """The first `want` usable candidates in rank order (all if None), the rejections met on the way, and the
    paths checked."""
    if want is not None and want > len(ranked):
        raise SampleError(f"sample.{split}: {want} images requested, but {split} holds only {len(ranked)} image files")
    rows, rejected, checked = [], [], set()
    with console.progress(want or len(ranked), f"checking {split} images", "img") as bar, \
            closing(_in_order(pool, examine, ranked, ahead)) as results:
        for candidate, result in results:
            checked.add(candidate.path)
            if result.reason is not None:
                rejected.append((candidate.path, result.reason))
                continue
            rows.append(Row(candidate.path, candidate.label, result.md5))
            bar.update()
            if len(rows) == want:
                break
    if want is not None and len(rows) < want:
        raise SampleError(f"sample.{split}: {want} images requested, but {split} holds only {len(rows)} usable "
                          f"images ({len(rejected)} of {len(ranked)} image files rejected)")
    # Rejections are news (the sample stage's summary counts them too); a clean split is a detail.
    log.log(logging.INFO if rejected else logging.DEBUG, "%s: sampled %d images, rejected %d", split, len(rows),
            len(rejected))
    return rows, rejected, checked


def _require_usable_image(split_folder: Path, folders: list[str], rows: list[Row], ranked: list[_Candidate],
                          checked: set[str], examine: Callable, pool: ThreadPoolExecutor) -> None:
    """Error naming the first class folder with no usable image. A folder nothing was sampled from is checked in
    rank order until a usable file turns up (usually its first); what is found there is not reported."""
    sampled = {row.path.split("/")[1] for row in rows}
    todo: dict[str, list[_Candidate]] = {name: [] for name in folders if name not in sampled}
    for candidate in ranked:
        parts = candidate.path.split("/")
        if len(parts) > 2 and parts[1] in todo and candidate.path not in checked:
            todo[parts[1]].append(candidate)
    names = sorted(todo)
    usable = pool.map(lambda name: any(examine(c).reason is None for c in todo[name]), names)
    for name, ok in zip(names, usable, strict=True):
        if not ok:
            raise SampleError(f"{split_folder / name}: class folder has no usable image")


class Draw(NamedTuple):
    """Which images a sample takes: `train`, `valid` images from each split (None: every usable one; more than the
    split holds is an error naming the key, `sample.train`), in the hash ranking of `seed`; `strict`: any rejected
    file is an error instead of being replaced by the next in rank."""
    train: int | None = None
    valid: int | None = None
    seed: int = 0
    strict: bool = False


def build_sample(*, entries: Iterable[Entry], root: str | os.PathLike, draw: Draw = Draw(),
                 valid_labels: str | None = None, class_order: Sequence[str] | None = None,
                 workers: int | None = None) -> Sample:
    """Sample and check images named by a listing (see `vggbn.storage.listing`).

    Args:
        entries: the listing's rows, e.g. `read_listing("data/listing.tsv")`.
        root: the data root the listing's paths are relative to.
        draw: how many images of each split, in which ranking, and whether a rejection is an error.
        valid_labels: None when `valid/` holds class folders; else the CSV (relative to the root) that labels a flat
            `valid/` folder: ImageId,PredictionString, the first token of PredictionString being the class, and
            `valid/<ImageId>.<extension>` the image.
        class_order: None: class index = position in the sorted train class folder names (Keras' order);
            else all class names in index order (e.g. ImageNet's WordNet ids), which must hold every train folder.
        workers: threads decoding images (Pillow releases the GIL); None: one per CPU, at least 4.

    Raises SampleError naming the path or key on a layout problem, a class folder without a usable image, too
    few usable images, or (strict) any rejection.
    """
    root, (train, valid, seed, strict) = Path(root), draw
    layout = _layout(root, entries, valid_labels, class_order)
    inside = sorted({os.path.realpath(root),
                     *(os.path.realpath(root / folder) for folder in split_folders(root).values())})

    def examine(candidate: _Candidate) -> Checked:
        return _examine(root, inside, candidate)

    workers = workers or max(4, os.cpu_count() or 1)
    Image.init()  # load Pillow's format plugins once, before threads race to
    drawn, rejected = {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_image rejects those images
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for split, want in (("train", train), ("valid", valid)):
                if not layout.candidates[split]:
                    raise SampleError(f"{root / split}: no image files (named {', '.join(IMAGE_EXTENSIONS)})")
                ranked = sorted(layout.candidates[split], key=lambda c: (_rank_key(c.path, seed), c.path))
                rows, split_rejected, checked = _draw(split, ranked, want, examine, pool, ahead=4 * workers)
                _require_usable_image(root / split, layout.class_folders[split], rows, ranked, checked, examine, pool)
                drawn[split] = sorted(rows)
                rejected += split_rejected
    rejected.sort()
    if strict and rejected:
        shown = "; ".join(f"{path} ({reason})" for path, reason in rejected[:STRICT_SHOWN])
        more = f"; and {len(rejected) - STRICT_SHOWN} more" if len(rejected) > STRICT_SHOWN else ""
        raise SampleError(f"sample.strict: {len(rejected)} unusable image{'s' * (len(rejected) != 1)} in {root}: "
                          f"{shown}{more}")
    return Sample(classes=layout.classes, train=drawn["train"], valid=drawn["valid"], rejected=rejected)
