"""The listing: a cheap, sorted, byte-stable stand-in for the image folder, which DVC does not track."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vggbn.storage.listing import HEADER, Entry, ListingError, read_listing, list_folder, scan, shell_word

ROOT = Path(__file__).resolve().parents[1]


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    touch(root / "train/b/2.JPEG", b"12")
    touch(root / "train/b/1.JPEG", b"1")
    touch(root / "train/a b/x.png", b"123")  # " " sorts before "/": "a b/..." comes before "a/..."
    touch(root / "train/a/y z ü.jpg", b"1234")
    touch(root / "train/a-b/w.gif", b"12345")
    touch(root / "train/a/.DS_Store")
    touch(root / "train/.cache/q.JPEG")
    (root / "train/empty").mkdir()
    touch(root / "valid/a/v.JPEG", b"123456")
    return root


def rows(out: Path) -> list[str]:
    return out.read_text(encoding="utf-8").splitlines()


def test_listing_is_sorted_skips_hidden_names_and_records_folders(folder, tmp_path):
    out = tmp_path / "listing.tsv"
    assert list_folder(root=folder, out=out) == {"root": str(folder), "rows": 14, "files": 6, "folders": 8,
                                                         "links": 0, "bad_names": 0}
    assert rows(out) == [HEADER, "train/\t0\tdir", "train/a b/\t0\tdir", "train/a b/x.png\t3\tfile",
                         "train/a-b/\t0\tdir", "train/a-b/w.gif\t5\tfile", "train/a/\t0\tdir",
                         "train/a/y z ü.jpg\t4\tfile", "train/b/\t0\tdir", "train/b/1.JPEG\t1\tfile",
                         "train/b/2.JPEG\t2\tfile", "train/empty/\t0\tdir", "valid/\t0\tdir", "valid/a/\t0\tdir",
                         "valid/a/v.JPEG\t6\tfile"]
    paths = [entry.path for entry in read_listing(out)]
    assert paths == sorted(paths)


def test_unchanged_folder_gives_a_byte_identical_listing_even_after_a_copy(folder, tmp_path):
    first, second, copied = tmp_path / "1.tsv", tmp_path / "2.tsv", tmp_path / "3.tsv"
    list_folder(root=folder, out=first)
    os.utime(folder / "train/b/1.JPEG", (1, 1))  # mtimes change on copy and checkout: they must not matter
    list_folder(root=folder, out=second)
    shutil.copytree(folder, tmp_path / "copy")
    list_folder(root=tmp_path / "copy", out=copied)
    assert first.read_bytes() == second.read_bytes() == copied.read_bytes()

    touch(folder / "train/b/3.JPEG")
    list_folder(root=folder, out=second)
    assert first.read_bytes() != second.read_bytes()
    (folder / "train/b/3.JPEG").unlink()
    (folder / "train/b/2.JPEG").write_bytes(b"123")  # same name, new content of another size
    list_folder(root=folder, out=second)
    assert "train/b/2.JPEG\t3\tfile" in rows(second)


def test_symlinks_are_recorded_not_followed(folder, tmp_path):
    outside = touch(tmp_path / "elsewhere/secret.JPEG", b"abcdefg")
    (folder / "train/a/out.JPEG").symlink_to(outside)
    (folder / "train/a/in.JPEG").symlink_to("../b/2.JPEG")
    (folder / "train/a/dangling.JPEG").symlink_to("../nothing.JPEG")
    (folder / "train/linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    out = tmp_path / "listing.tsv"
    list_folder(root=folder, out=out)
    listed = {entry.path: entry for entry in read_listing(out)}
    assert listed["train/a/out.JPEG"] == Entry("train/a/out.JPEG", 7, "link")  # the size of what it points to
    assert listed["train/a/in.JPEG"] == Entry("train/a/in.JPEG", 2, "link")
    assert listed["train/a/dangling.JPEG"] == Entry("train/a/dangling.JPEG", 0, "link")
    assert listed["train/linked"] == Entry("train/linked", 0, "link")
    assert not any(path.startswith("train/linked/") for path in listed)


def test_names_a_tsv_row_cannot_hold_are_escaped_and_marked(folder, tmp_path):
    touch(folder / "train/a/tab\there.JPEG")
    touch(folder / "train/a/new\nline.JPEG")
    try:
        with open(os.fsencode(folder / "train/a") + b"/latin1-\xe9.JPEG", "wb"):  # not UTF-8
            pass
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    touch(folder / "train/bad\tclass/x.JPEG")
    out = tmp_path / "listing.tsv"
    list_folder(root=folder, out=out)
    out.read_bytes().decode("utf-8")  # valid UTF-8 throughout
    marked = {entry.path for entry in read_listing(out) if entry.kind == "badname"}
    assert marked == {"train/a/tab\\x09here.JPEG", "train/a/new\\x0aline.JPEG", "train/a/latin1-\\xe9.JPEG",
                      "train/bad\\x09class/", "train/bad\\x09class/x.JPEG"}


def test_a_badname_path_is_a_shell_word_for_the_very_file(folder, tmp_path):
    """What `rejected.tsv` shows of such a name can be pasted into a shell, and names the file itself."""
    names = [b"\xff\xfe.png", b"quote ' and back\\slash\t.png", "line\u2028sep \u00e9\n.png".encode()]
    for name in names:
        try:
            with open(os.fsencode(folder / "train/a") + b"/" + name, "wb") as file:
                file.write(name)
        except OSError:
            pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "listing.tsv"
    list_folder(root=folder, out=out)
    words = [shell_word(entry.path) for entry in read_listing(out) if entry.kind == "badname"]
    assert len(words) == len(names) and all(word.startswith("$'train/a/") for word in words)
    shown = [subprocess.run(["bash", "-c", f"cat -- {word}"], cwd=folder, capture_output=True, check=True).stdout
             for word in words]  # bash itself opens the file each word names, from the data root
    assert sorted(shown) == sorted(names)  # each file holds its own name


def test_labels_csv_is_listed_first_with_a_content_hash(folder, tmp_path):
    csv = touch(folder / "labels.csv", b"ImageId,PredictionString\nv,n01 1 2 3 4\n")
    out = tmp_path / "listing.tsv"
    list_folder(root=folder, out=out, valid_labels="labels.csv")
    first = rows(out)
    assert first[1].startswith(f"labels.csv\t{csv.stat().st_size}\tlabels md5=")
    csv.write_bytes(b"ImageId,PredictionString\nv,n02 1 2 3 4\n")  # same size, another class
    list_folder(root=folder, out=out, valid_labels="labels.csv")
    assert rows(out)[1] != first[1] and rows(out)[2:] == first[2:]


@pytest.mark.parametrize("remove, valid_labels, message", [
    ("", None, r"data: data root does not exist"),
    ("train", None, r"data/train: missing train folder"),
    ("valid", None, r"data/valid: missing valid folder \(expected .*data/valid/<class>/<file>\)"),
    ("valid", "labels.csv", r"data/valid: missing valid folder \(expected .*data/valid/<file> labelled by labels.csv"),
    ("nothing", "labels.csv", r"data/labels.csv: data.valid_labels file does not exist"),
])
def test_layout_errors_name_the_path(folder, tmp_path, remove, valid_labels, message):
    if remove == "":
        shutil.rmtree(folder)
    elif remove != "nothing":
        shutil.rmtree(folder / remove)
    if remove == "valid" and valid_labels:
        touch(folder / valid_labels)
    out = tmp_path / "listing.tsv"
    with pytest.raises(ListingError, match=message):
        list_folder(root=folder, out=out, valid_labels=valid_labels)
    assert not out.exists() and not list(tmp_path.glob(".partial-*"))


def test_scan_checks_the_layout_before_yielding(tmp_path):
    with pytest.raises(ListingError, match="does not exist"):
        scan(tmp_path / "missing")  # raised by the call, not by the first next()


def test_read_listing_rejects_what_is_not_a_listing(tmp_path):
    (tmp_path / "x.tsv").write_text("path\tlabel\tmd5\n")
    with pytest.raises(ListingError, match=r"x.tsv: not a listing"):
        list(read_listing(tmp_path / "x.tsv"))
    (tmp_path / "y.tsv").write_text(f"{HEADER}\ntrain/\t0\tdir\ntrain/a\tbig\tfile\n")
    with pytest.raises(ListingError, match=r"y.tsv:3: malformed"):
        list(read_listing(tmp_path / "y.tsv"))


def test_stage_script_writes_the_listing_and_reports_errors_in_one_line(folder, tmp_path):
    (tmp_path / "params.yaml").write_text("data:\n  root: data\n")
    command = [sys.executable, str(ROOT / "stages/listing.py"), "--out", "out/listing.tsv"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    list_folder(root=folder, out=tmp_path / "expected.tsv")
    assert (tmp_path / "out/listing.tsv").read_bytes() == (tmp_path / "expected.tsv").read_bytes()

    (tmp_path / "params.yaml").write_text("data:\n  root: nowhere\n")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1:] == ["error: nowhere: data root does not exist"]
    assert "Traceback" not in result.stderr
