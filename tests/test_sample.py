"""The sample: stable seeded manifests of images that decode, with exact rejections; real files made with Pillow."""

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggbn.storage.listing import read_listing, list_folder
from vggbn.storage.manifest import read_manifest, write_sample
from vggbn.storage.sampling import Draw, SampleError, build_sample, check_image, rank, refused_format

ROOT = Path(__file__).resolve().parents[1]


def image_bytes(mode="RGB", size=(8, 6), fmt="JPEG", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def listed(root: Path, valid_labels=None) -> list:
    out = root.parent / "listing.tsv"
    list_folder(root=root, out=out, valid_labels=valid_labels)
    return list(read_listing(out))


def sample(root: Path, **kwargs):
    draw = Draw(**{key: kwargs.pop(key) for key in Draw._fields if key in kwargs})
    return build_sample(entries=listed(root, kwargs.get("valid_labels")), root=root, draw=draw, **kwargs)


JPEG = image_bytes()
BIG_JPEG = image_bytes(size=(64, 48))
GOOD = {
    "train/cat/rgb.jpg": JPEG,
    "train/cat/gray.JPEG": image_bytes("L"),
    "train/cat/cmyk.jpeg": image_bytes("CMYK"),
    "train/cat/mpo-like camera ü.JPG": image_bytes(seed=1),
    "train/dog/rgba.png": image_bytes("RGBA", fmt="PNG"),
    "train/dog/palette.png": image_bytes("P", fmt="PNG"),
    "train/dog/deep.png": image_bytes("I;16", fmt="PNG"),
    "train/dog/png named.JPEG": image_bytes(fmt="PNG"),
    "train/dog/anim.gif": image_bytes("P", fmt="GIF"),
    "train/dog/true.bmp": image_bytes(fmt="BMP"),
    "train/dog/gray.bmp": image_bytes("L", fmt="BMP"),
    "train/dog/picture.webp": image_bytes(fmt="WEBP"),
    "train/eel/only.jpg": image_bytes(seed=2),
    "valid/cat/v1.jpg": image_bytes(seed=3),
    "valid/dog/v2.png": image_bytes(fmt="PNG", seed=4),
}
BAD = {
    "train/cat/empty.JPEG": (b"", "empty file"),
    "train/cat/truncated.JPEG": (BIG_JPEG[:-200], "truncated"),  # in the image data
    "train/cat/cut header.JPEG": (JPEG[:300], "truncated"),
    "train/cat/text.JPEG": (b"hello, I am text\n", "not an image"),
    "train/dog/tiff.jpg": (image_bytes(fmt="TIFF"), "TIFF image, not one of JPEG, PNG, BMP, GIF, WEBP"),
    "train/dog/mono.bmp": (image_bytes("1", fmt="BMP"), "BMP with 1 bits per pixel, which TensorFlow does not decode"),
    "train/dog/palette.bmp": (image_bytes("P", fmt="BMP"), "palette BMP, which TensorFlow decodes as gray palette "
                                                           "indices"),
    "train/cat/phone.HEIC": (b"\0\0\0\x18ftypheic", "HEIC file, which TensorFlow does not decode (convert it to "
                                                     "JPEG or PNG)"),
    "train/stray.jpg": (JPEG, "not inside a class folder"),
    "valid/dog/cut.png": (image_bytes(fmt="PNG")[:60], "truncated"),
}
SILENT = {
    "train/cat/.DS_Store": b"\0\0\0\1Bud1",
    "train/cat/.hidden.JPEG": JPEG,
    "train/.ipynb_checkpoints/x.JPEG": JPEG,
    "train/cat/notes.txt": b"notes",
}


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "data"
    for path, data in {**GOOD, **{p: d for p, (d, _) in BAD.items()}, **SILENT}.items():
        put(root / path, data)
    outside = put(tmp_path / "outside/secret.jpg", JPEG)
    (root / "train/cat/escape.JPEG").symlink_to(outside)
    (root / "train/cat/alias.JPEG").symlink_to("../dog/png named.JPEG")
    (root / "train/eel/linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    return root


EXPECTED_REJECTED = {**{path: reason for path, (_, reason) in BAD.items()},
                     "train/cat/escape.JPEG": "symlink pointing outside the data root",
                     "train/eel/linked": "symlinked folder, which is not followed"}


def test_every_usable_file_is_sampled_and_exactly_the_unusable_ones_are_rejected(root):
    result = sample(root)
    assert dict(result.rejected) == EXPECTED_REJECTED
    assert [row.path for row in result.train] == sorted([p for p in GOOD if p.startswith("train/")]
                                                        + ["train/cat/alias.JPEG"])
    assert [row.path for row in result.valid] == ["valid/cat/v1.jpg", "valid/dog/v2.png"]
    assert result.metrics == {"train_images": 14, "valid_images": 2, "rejected": len(EXPECTED_REJECTED)}
    for row in result.train + result.valid:
        assert row.md5 == hashlib.md5((root / row.path).read_bytes()).hexdigest()


def test_check_image_keeps_what_tensorflow_decodes(root):
    for path in GOOD:
        assert check_image(root / path).reason is None, path
    for path, (_, reason) in BAD.items():
        if path != "train/stray.jpg" and not refused_format(path):  # those two rejected by their names
            assert check_image(root / path).reason == reason, path


def test_pillow_checks_agree_with_tensorflows_decoder(root):
    """What check_image keeps, tf.io.decode_image decodes; what it rejects for its bytes, TensorFlow cannot decode
    (except a palette BMP, which it decodes to the wrong colours)."""
    tf = pytest.importorskip("tensorflow")

    def decodes(path):
        try:
            tf.io.decode_image((root / path).read_bytes(), channels=3, expand_animations=False)
            return True
        except (tf.errors.InvalidArgumentError, ValueError):
            return False

    assert all(decodes(path) for path in GOOD)
    assert not any(decodes(path) for path in BAD if path not in ("train/stray.jpg", "train/dog/palette.bmp"))


def test_class_index_is_the_sorted_train_folders_of_the_whole_folder(root, tmp_path):
    (root / "train/ant").mkdir()
    put(root / "train/ant/a.jpg", JPEG)
    result = sample(root, train=1, valid=1, seed=3)
    assert result.classes == ["ant", "cat", "dog", "eel"]  # not only those sampled
    for row in result.train + result.valid:
        assert result.classes[row.label] == row.path.split("/")[1]
    write_sample(tmp_path / "out", result)
    assert (tmp_path / "out/classes.txt").read_text() == "ant\ncat\ndog\neel\n"


def test_explicit_class_order(root, tmp_path):
    order = ["zebra", "dog", "eel", "cat", "yak"]
    result = sample(root, class_order=order)
    assert result.classes == order
    assert {row.path.split("/")[1]: row.label for row in result.train} == {"dog": 1, "eel": 2, "cat": 3}
    write_sample(tmp_path / "out", result)
    assert (tmp_path / "out/classes.txt").read_text() == "zebra\ndog\neel\ncat\nyak\n"
    with pytest.raises(SampleError, match=r"data/train/eel: class folder is not in the given class order"):
        sample(root, class_order=["dog", "cat"])


def test_layout_errors_name_the_path(root):
    put(root / "valid/fox/f.jpg", JPEG)
    with pytest.raises(SampleError, match=r"data/valid/fox: validation class folder has no counterpart in .*/train$"):
        sample(root)
    (root / "valid/fox/f.jpg").unlink()
    (root / "valid/fox").rmdir()
    (root / "train/eel/only.jpg").write_bytes(JPEG[:100])
    with pytest.raises(SampleError, match=r"data/train/eel: class folder has no usable image$"):
        sample(root)
    with pytest.raises(SampleError, match=r"data/train/eel: class folder has no usable image$"):
        sample(root, train=2)  # a folder nothing was sampled from is still checked
    (root / "train/eel/only.jpg").unlink()
    with pytest.raises(SampleError, match=r"data/train/eel: class folder has no usable image$"):
        sample(root, train=2)
    (root / "valid/empty").mkdir()
    (root / "train/empty").mkdir()
    (root / "train/eel/only.jpg").write_bytes(JPEG)
    with pytest.raises(SampleError, match=r"data/train/empty: class folder has no usable image$"):
        sample(root, train=2)


def test_asking_for_more_than_the_split_holds_names_the_key_and_the_count(root):
    with pytest.raises(SampleError, match=r"^sample\.train: 50 images requested, but train holds only 25 image files$"):
        sample(root, train=50)
    # 24 files named like images and one linked folder are candidates; 14 are usable
    with pytest.raises(SampleError, match=r"^sample\.train: 15 images requested, but train holds only 14 usable"):
        sample(root, train=15)
    with pytest.raises(SampleError, match=r"^sample\.valid: 4 images requested, but valid holds only 3 image files$"):
        sample(root, valid=4)


def test_rejected_files_are_replaced_by_the_next_in_rank(root):
    result = sample(root, train=6, seed=5)
    assert len(result.train) == 6
    ranked = rank([e.path for e in listed(root) if e.path.startswith("train/") and not e.path.endswith("/")
                   and (e.path.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"))
                        or e.kind == "link")],
                  seed=5)
    last = max(ranked.index(row.path) for row in result.train)
    examined = ranked[:last + 1]  # the first six usable files in rank order, and the rejections before them
    assert {row.path for row in result.train} == set(examined) - set(EXPECTED_REJECTED)
    assert {path for path, _ in result.rejected if path.startswith("train/") and not refused_format(path)} \
        == set(examined) & set(EXPECTED_REJECTED)  # those refused by name are rejected before any ranking
    assert len(examined) > 6  # this seed puts rejections among the first candidates


def test_the_sample_is_stable_when_a_few_files_are_added(tmp_path):
    root = tmp_path / "data"
    for i in range(200):
        put(root / f"train/c{i % 4}/img{i:03d}.jpg", JPEG)
    put(root / "valid/c0/v.jpg", JPEG)
    before = {row.path for row in sample(root, train=50, seed=7).train}
    for i in range(3):
        put(root / f"train/c{i}/new{i}.jpg", JPEG)
    after = {row.path for row in sample(root, train=50, seed=7).train}
    assert len(after) == 50 and len(after - before) <= 3
    assert after - before <= {f"train/c{i}/new{i}.jpg" for i in range(3)}
    other_seed = {row.path for row in sample(root, train=50, seed=8).train}
    assert len(other_seed - after) > 20


def test_same_inputs_give_byte_identical_outputs(root, tmp_path):
    outputs = []
    for n, workers in enumerate((1, 8)):
        out = tmp_path / f"out{n}"
        write_sample(out, build_sample(entries=listed(root), root=root, draw=Draw(train=9, seed=2), workers=workers))
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1]
    assert sorted(outputs[0]) == ["classes.txt", "rejected.tsv", "train.tsv", "valid.tsv"]
    manifest = outputs[0]["train.tsv"].decode().splitlines()
    assert manifest[0] == "path\tlabel\tmd5" and manifest[1:] == sorted(manifest[1:]) and len(manifest) == 10
    rejected = outputs[0]["rejected.tsv"].decode().splitlines()
    assert rejected[0] == "path\treason" and rejected[1:] == sorted(rejected[1:])


def test_the_sample_does_not_depend_on_the_order_of_the_listing(root):
    entries = listed(root)
    assert build_sample(entries=entries[::-1], root=root, draw=Draw(train=7)) == \
        build_sample(entries=entries, root=root, draw=Draw(train=7))


def test_manifest_round_trip(root, tmp_path):
    result = sample(root)
    write_sample(tmp_path / "out", result)
    manifest = read_manifest(tmp_path / "out/train.tsv")
    assert manifest.paths == [row.path for row in result.train]
    assert manifest.labels == [row.label for row in result.train]
    assert manifest.md5s == [row.md5 for row in result.train]


def test_strict_turns_rejections_into_one_error_line(root):
    with pytest.raises(SampleError) as error:
        sample(root, strict=True)
    message = str(error.value)
    assert "\n" not in message
    shown = "; ".join(f"{path} ({EXPECTED_REJECTED[path]})" for path in sorted(EXPECTED_REJECTED)[:5])
    assert message == f"sample.strict: {len(EXPECTED_REJECTED)} unusable images in {root}: {shown}; and " \
                      f"{len(EXPECTED_REJECTED) - 5} more"


def test_decompression_bombs_are_rejected(root, monkeypatch):
    put(root / "train/cat/warns.png", image_bytes(size=(40, 30), fmt="PNG"))  # 1200 pixels > limit: Pillow warns
    put(root / "train/cat/raises.jpg", image_bytes(size=(50, 50)))  # 2500 > 2 * limit: Pillow raises
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    rejected = dict(sample(root).rejected)
    assert rejected["train/cat/warns.png"] == "40x30 pixels, more than the decompression-bomb limit of 1000"
    assert rejected["train/cat/raises.jpg"] == "more pixels than the decompression-bomb limit of 1000"
    assert set(rejected) == set(EXPECTED_REJECTED) | {"train/cat/warns.png", "train/cat/raises.jpg"}


def test_names_a_manifest_cannot_hold_are_rejected(root):
    put(root / "train/cat/tab\tname.jpg", JPEG)
    put(root / "train/cat/new\nline.jpg", JPEG)
    rejected = dict(sample(root).rejected)
    reason = "name holds a tab, a line break or bytes that are not UTF-8"
    assert rejected["$'train/cat/tab\\x09name.jpg'"] == reason and rejected["$'train/cat/new\\x0aline.jpg'"] == reason
    with open(os.fsencode(root / "train/cat") + b"/\xff\xfe.jpg", "wb") as file:  # not UTF-8
        file.write(JPEG)
    assert dict(sample(root).rejected)["$'train/cat/\\xff\\xfe.jpg'"] == reason  # pasted into bash: that very file
    put(root / "train/bad\tclass/x.jpg", JPEG)
    with pytest.raises(SampleError, match=r"data/train/bad\\x09class/: class folder name holds a tab"):
        sample(root)


def test_links_to_what_is_not_a_regular_file_are_rejected(root):
    os.mkfifo(root / "train/dog/pipe")  # the listing skips pipes; a link to one must not hang the sample
    (root / "train/dog/pipe.jpg").symlink_to("pipe")
    (root / "train/dog/nothing.jpg").symlink_to("missing.jpg")
    rejected = dict(sample(root).rejected)
    assert rejected["train/dog/pipe.jpg"] == "not a regular file"
    assert rejected["train/dog/nothing.jpg"] == "broken symlink"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_files_are_rejected(root):
    (root / "train/cat/rgb.jpg").chmod(0)
    assert dict(sample(root).rejected)["train/cat/rgb.jpg"] == "unreadable: Permission denied"


CSV = "ImageId,PredictionString\n" \
      "ILSVRC2012_val_1,dog 1 2 3 4 dog 5 6 7 8\n" \
      "ILSVRC2012_val_2,cat 0 0 9 9\n" \
      "ILSVRC2012_val_3,fox 0 0 9 9\n" \
      "ILSVRC2012_val_5,dog 0 0 9 9\n"


def flat(root: Path) -> Path:
    for child in (root / "valid").rglob("*"):
        if child.is_file():
            child.unlink()
    for folder in sorted((root / "valid").iterdir()):
        folder.rmdir()
    for i in (1, 2, 3, 4):
        put(root / f"valid/ILSVRC2012_val_{i}.JPEG", image_bytes(seed=10 + i))
    put(root / "valid/ILSVRC2012_val_5.JPEG", b"")
    (root / "LOC_val_solution.csv").write_text(CSV)
    return root


def test_flat_valid_folder_labelled_by_a_csv(root):
    result = sample(flat(root), valid_labels="LOC_val_solution.csv")
    assert [(row.path, result.classes[row.label]) for row in result.valid] == [
        ("valid/ILSVRC2012_val_1.JPEG", "dog"), ("valid/ILSVRC2012_val_2.JPEG", "cat")]
    rejected = {p: r for p, r in result.rejected if p.startswith("valid/")}
    assert rejected == {
        "valid/ILSVRC2012_val_3.JPEG": "class 'fox' in LOC_val_solution.csv is not a train class folder",
        "valid/ILSVRC2012_val_4.JPEG": "no row in LOC_val_solution.csv",
        "valid/ILSVRC2012_val_5.JPEG": "empty file"}


def test_flat_valid_csv_without_the_expected_columns_is_an_error(root):
    flat(root)
    (root / "LOC_val_solution.csv").write_text("id,label\nILSVRC2012_val_1,dog\n")
    with pytest.raises(SampleError, match=r"LOC_val_solution.csv: data.valid_labels: expected the columns "
                                          r"ImageId,PredictionString, got id,label"):
        sample(root, valid_labels="LOC_val_solution.csv")


def test_stage_script(root, tmp_path):
    flat(root)
    (tmp_path / "params.yaml").write_text("data:\n  root: data\n  valid_labels: LOC_val_solution.csv\n"
                                          "sample:\n  train: 5\n  seed: 1\n")
    run = [sys.executable, str(ROOT / "stages/listing.py"), "--out", "listing.tsv"]
    assert subprocess.run(run, cwd=tmp_path, capture_output=True).returncode == 0
    command = [sys.executable, str(ROOT / "stages/sample.py"), "--listing", "listing.tsv", "--out", "out",
               "--metrics", "metrics/sample.json"]
    result = subprocess.run([command[0], "-X", "importtime", *command[1:]], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "tensorflow" not in result.stderr  # -X importtime lists every module imported
    sample = build_sample(entries=read_listing(tmp_path / "listing.tsv"), root=root, draw=Draw(train=5, seed=1),
                          valid_labels="LOC_val_solution.csv")
    write_sample(tmp_path / "expected", sample)
    expected = sample.metrics
    assert json.loads((tmp_path / "metrics/sample.json").read_text()) == expected
    assert expected["train_images"] == 5 and expected["valid_images"] == 2
    for name in ("train.tsv", "valid.tsv", "classes.txt", "rejected.tsv"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()

    (tmp_path / "params.yaml").write_text("data:\n  root: data\n  valid_labels: LOC_val_solution.csv\n"
                                          "sample:\n  train: 500\n")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == "error: sample.train: 500 images requested, but train holds only " \
                                             "25 image files"


def test_read_manifest_names_the_file_and_the_line(tmp_path):
    from vggbn.storage.manifest import SampleError, read_manifest

    good = tmp_path / "train.tsv"
    good.write_text("path\tlabel\tmd5\ntrain/a b/ü.JPEG\t3\tabc\n", encoding="utf-8")
    assert read_manifest(good) == (["train/a b/ü.JPEG"], [3], ["abc"])
    (tmp_path / "bad.tsv").write_text("path\tlabel\tmd5\ntrain/x.png\tthree\tabc\n")
    with pytest.raises(SampleError, match=r"bad.tsv:2: malformed sample manifest row \(expected path, label, md5\)"):
        read_manifest(tmp_path / "bad.tsv")
    (tmp_path / "other.tsv").write_text("path\tsize\tkind\n")
    with pytest.raises(SampleError, match=r"other.tsv: not a sample manifest"):
        read_manifest(tmp_path / "other.tsv")
    with pytest.raises(SampleError, match=r"gone.tsv: cannot read sample manifest"):
        read_manifest(tmp_path / "gone.tsv")


def test_a_val_folder_is_read_as_valid_and_both_is_one_error(tmp_path):
    """torchvision's and timm's ImageNet layout names the validation folder val/: its images are the valid split,
    with their own paths; a root holding both folders is one error naming it."""
    from vggbn.storage.listing import ListingError

    root = tmp_path / "data"
    for path in ("train/cat/a.jpg", "train/dog/b.jpg", "val/cat/c.jpg", "val/dog/d.png"):
        put(root / path, image_bytes(fmt="PNG" if path.endswith("png") else "JPEG"))
    result = sample(root)
    assert [(row.path, row.label) for row in result.valid] == [("val/cat/c.jpg", 0), ("val/dog/d.png", 1)]
    assert [row.path for row in result.train] == ["train/cat/a.jpg", "train/dog/b.jpg"]
    put(root / "valid/cat/e.jpg", JPEG)
    with pytest.raises(ListingError, match=rf"^{root}: holds both valid/ and val/: keep one validation folder"):
        listed(root)
