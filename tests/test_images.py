"""vggbn.numerics.images (decoding real files, resize geometry, Keras' preprocessing, the tf.data pipeline) and
vggbn.storage.imagenet (the shipped class table)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from vggbn.numerics import images
from vggbn.storage import imagenet  # noqa: E402


def decoded(path) -> np.ndarray:
    image = images.decode(tf.io.read_file(str(path)))
    assert image.dtype == tf.uint8 and image.shape[-1] == 3
    return image.numpy()


# --- decoding ---------------------------------------------------------------------------------------------

def test_decode_grayscale_jpeg(tmp_path):
    Image.new("L", (16, 12), 77).save(tmp_path / "gray.jpg", quality=95)
    out = decoded(tmp_path / "gray.jpg")
    assert out.shape == (12, 16, 3)
    assert np.abs(out.astype(int) - 77).max() <= 2


def test_decode_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # pure red
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = decoded(tmp_path / "cmyk.jpg")
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - [255, 0, 0]).max() <= 3


def test_decode_rgba_png_drops_alpha(tmp_path):
    Image.new("RGBA", (5, 4), (10, 200, 30, 0)).save(tmp_path / "rgba.png")
    out = decoded(tmp_path / "rgba.png")
    assert out.shape == (4, 5, 3)
    assert (out == [10, 200, 30]).all()


def test_decode_palette_png(tmp_path):
    image = Image.new("P", (6, 3), 1)
    image.putpalette([0, 0, 0, 250, 120, 5] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    out = decoded(tmp_path / "palette.png")
    assert out.shape == (3, 6, 3)
    assert (out[0, 0] == 0).all() and (out[2, 5] == [250, 120, 5]).all()


def test_decode_16_bit_png_is_scaled_not_truncated(tmp_path):
    values = np.array([[65535, 32768, 256, 255, 0]], dtype="<u2")
    Image.frombytes("I;16", (5, 1), values.tobytes()).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    out = decoded(tmp_path / "deep.png")
    assert out.shape == (1, 5, 3)
    assert out[0, :, 0].tolist() == [255, 128, 1, 0, 0]  # truncating would give 255, 0, 0, 255, 0
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_decode_png_named_jpeg(tmp_path):
    Image.new("RGB", (3, 2), (1, 2, 3)).save(tmp_path / "n0001.JPEG", format="PNG")
    assert (decoded(tmp_path / "n0001.JPEG") == [1, 2, 3]).all()


def test_decode_rgb_jpeg_colour(tmp_path):
    Image.new("RGB", (16, 16), (200, 40, 90)).save(tmp_path / "rgb.jpg", quality=95)
    assert np.abs(decoded(tmp_path / "rgb.jpg").astype(int) - [200, 40, 90]).max() <= 3


def noisy_jpeg(path, seed=0, size=(64, 48)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def sideways_photo() -> np.ndarray:
    """24x40 pixels, a white quarter and a green edge: every turn and mirror gives other pixels."""
    stored = np.zeros((24, 40, 3), np.uint8)
    stored[:12, :20] = 255
    stored[:, :6, 1] = 200
    return stored


@pytest.mark.parametrize("endian", ["<", ">"])  # EXIF in Intel and Motorola byte order
def test_exif_orientation_is_applied_before_resizing(tmp_path, endian):
    """A rotated JPEG (a phone's portrait photo: pixels stored sideways, EXIF orientation saying how to turn them)
    decodes upright, as Pillow's `exif_transpose` shows it, for each of the 8 orientations; the pipeline's resize
    gets the upright image."""
    from PIL import ImageOps

    stored = sideways_photo()
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x010F], exif[0x0112] = "test camera", orientation  # orientation not the first entry
        exif.endian = endian
        path = tmp_path / f"o{orientation}.jpg"
        Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
        upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")).astype(int)
        out = decoded(path).astype(int)
        assert out.shape == upright.shape == ((24, 40, 3) if orientation <= 4 else (40, 24, 3)), orientation
        assert np.abs(out - upright).max() <= 16, orientation  # two JPEG decoders' rounding; a turn moves 255s
        assert int(images.exif_orientation(tf.io.read_file(str(path)))) == orientation
    batch = images.load_batch([str(tmp_path / "o6.jpg")], size=(40, 24), resize="squash", preprocess="none")[0]
    assert np.abs(batch - decoded(tmp_path / "o6.jpg")).max() <= 1  # already upright: the resize keeps it


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def exif_block(orientation: int, endian: str = "<", kind: int = 3) -> bytes:
    """An APP1 payload: "Exif", a TIFF header, IFD0 with a camera name and the orientation (SHORT or LONG)."""
    import struct

    value = struct.pack(endian + "H", orientation) + b"\x00\x00" if kind == 3 else struct.pack(endian + "I", orientation)
    entries = [struct.pack(endian + "HHI", 0x010F, 2, 4) + b"cam\x00", struct.pack(endian + "HHI", 0x0112, kind, 1) + value]
    header = (b"II" if endian == "<" else b"MM") + struct.pack(endian + "HI", 42, 8)
    return b"Exif\x00\x00" + header + struct.pack(endian + "H", len(entries)) + b"".join(entries) + b"\x00" * 4


def test_exif_is_found_past_other_segments_as_pillow_finds_it(tmp_path):
    """EXIF after a comment, an ICC profile (APP2) and JFIF's APP0, the orientation as SHORT or LONG in either byte
    order: the orientation read is Pillow's, and the image decodes as Pillow's `exif_transpose` shows it."""
    from io import BytesIO

    from PIL import ImageOps

    stored = sideways_photo()
    plain = BytesIO()
    Image.fromarray(stored).save(plain, format="JPEG", quality=95)
    plain = plain.getvalue()
    assert plain[2:4] == b"\xff\xe0"  # Pillow writes JFIF's APP0 first
    for orientation, endian, kind in ((6, "<", 3), (8, ">", 3), (3, "<", 4), (5, ">", 4), (2, "<", 3)):
        extra = (jpeg_segment(0xFE, b"a comment"), jpeg_segment(0xE2, b"ICC_PROFILE\x00" + bytes(300)),
                 jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x/>"),
                 jpeg_segment(0xE1, exif_block(orientation, endian, kind)))
        data = plain[:20] + b"".join(extra) + plain[20:]  # after SOI and APP0 (18 bytes)
        path = tmp_path / f"o{orientation}{kind}.jpg"
        path.write_bytes(data)
        assert Image.open(path).getexif().get(0x0112) == orientation
        assert int(images.exif_orientation(tf.constant(data))) == orientation
        upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")).astype(int)
        assert np.abs(decoded(path).astype(int) - upright).max() <= 16, orientation


def test_exif_orientation_is_1_without_exif_or_with_damaged_exif(tmp_path):
    Image.new("RGB", (8, 6), (1, 2, 3)).save(tmp_path / "plain.jpg")
    Image.new("RGB", (8, 6), (1, 2, 3)).save(tmp_path / "plain.png")
    for name in ("plain.jpg", "plain.png"):
        assert int(images.exif_orientation(tf.io.read_file(str(tmp_path / name)))) == 1
    good = exif_block(6)
    damaged = (b"Exif\x00\x00", b"Exif\x00\x00II*\x00\xff\xff\xff\x7f", b"Exif\x00\x00XX" + good[8:],
               b"Exif\x00\x00MM" + good[8:], good.replace(b"\x12\x01\x03\x00", b"\x12\x01\x09\x00"),
               exif_block(9), exif_block(0))
    for payload in damaged:  # empty TIFF, IFD0 far past the end, no byte order, the wrong one, a bad type, bad values
        assert int(images.exif_orientation(tf.constant(b"\xff\xd8" + jpeg_segment(0xE1, payload)))) == 1, payload
    segment = jpeg_segment(0xE1, good)  # ends with the orientation entry (12 bytes), then 4 of the next IFD's offset
    for shorter, orientation in ((4, 6), (16, 1)):  # a length field saying the segment ends before that entry: not read
        assert int(images.exif_orientation(tf.constant(
            b"\xff\xd8" + segment[:2] + (len(good) + 2 - shorter).to_bytes(2, "big") + segment[4:]))) == orientation
    assert int(images.exif_orientation(tf.constant(b"\xff\xd8" + jpeg_segment(0xE1, good)))) == 6
    assert int(images.exif_orientation(tf.constant(b"\xff\xd8\xff\xda" + jpeg_segment(0xE1, good)))) == 1  # image data
    assert int(images.exif_orientation(tf.constant(jpeg_segment(0xE1, good)))) == 1  # no start marker


def test_exif_orientation_of_a_batch_keeps_its_shape():
    files = [b"\xff\xd8" + jpeg_segment(0xE1, exif_block(o, endian)) for o, endian in ((6, "<"), (3, ">"), (1, "<"))]
    files.append(b"not an image")
    out = images.exif_orientation(tf.reshape(tf.constant(files), (2, 2)))
    assert out.dtype == tf.int32 and out.numpy().tolist() == [[6, 3], [1, 1]]


def test_pipeline_turns_each_image_of_a_mixed_batch(tmp_path, monkeypatch):
    """Orientations are read a batch of files at a time (EXIF_BATCH, here 2, so batches of it straddle the
    pipeline's): every image is turned as its own file says, in the order of the paths, labels alongside."""
    monkeypatch.setattr(images, "EXIF_BATCH", 2)
    stored = sideways_photo()
    paths = []
    for i, orientation in enumerate((1, 6, 3, 8, 1, 5, 7)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        paths.append(str(tmp_path / f"{i}.jpg"))
        Image.fromarray(stored).save(paths[-1], quality=95, exif=exif.tobytes())
    Image.fromarray(stored).save(tmp_path / "7.png")
    paths.append(str(tmp_path / "7.png"))
    batches = list(images.image_dataset(paths, (30, 30), "pad", "none", batch_size=3, labels=list(range(8))))
    got = np.concatenate([b[0].numpy() for b in batches])
    assert np.concatenate([b[1].numpy() for b in batches]).tolist() == list(range(8))
    expected = np.stack([images.resize(decoded(p), (30, 30), "pad").numpy() for p in paths])
    np.testing.assert_array_equal(got, expected)
    assert [images.decode(tf.io.read_file(p)).shape[0] for p in paths] == [24, 40, 24, 40, 24, 40, 40, 24]


def test_truncated_jpeg_raises_when_iterated(tmp_path):
    good = noisy_jpeg(tmp_path / "good.jpg")
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    dataset = images.image_dataset([str(good), str(tmp_path / "cut.jpg")], size=(8, 8), resize="squash",
                                   preprocess="caffe", batch_size=1)
    batches = iter(dataset)
    assert next(batches).shape == (1, 8, 8, 3)
    with pytest.raises(tf.errors.InvalidArgumentError):
        next(batches)


def test_not_an_image_raises(tmp_path):
    (tmp_path / "x.jpg").write_text("not an image")
    with pytest.raises(tf.errors.InvalidArgumentError):
        images.load_batch([str(tmp_path / "x.jpg")], size=(8, 8), resize="squash", preprocess="none")


# --- resize geometry --------------------------------------------------------------------------------------

STRIPES = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)  # A B C D


def striped(height=20, width=40):
    """20 rows x 40 columns: four vertical stripes A B C D, 10 columns each."""
    return np.repeat(STRIPES[np.newaxis], width // 4, axis=1).repeat(height, axis=0)


def stripe_colours(row):
    """The colour of each run of equal pixels along a row, with run lengths."""
    runs, start = [], 0
    for i in range(1, len(row) + 1):
        if i == len(row) or not np.allclose(row[i], row[start]):
            runs.append((tuple(np.round(row[start]).astype(int)), i - start))
            start = i
    return runs


def colour(index):
    return tuple(int(v) for v in STRIPES[index])


def test_squash_keeps_all_content_and_ignores_aspect_ratio():
    out = images.resize(striped(), (20, 20), "squash").numpy()
    assert out.shape == (20, 20, 3) and out.dtype == np.float32
    for row in out:
        assert stripe_colours(row) == [(colour(0), 5), (colour(1), 5), (colour(2), 5), (colour(3), 5)]


def test_resize_is_bilinear():
    ramp = np.zeros((1, 2, 3), np.uint8)
    ramp[0, 1] = 255
    out = images.resize(ramp, (1, 4), "squash").numpy()[0, :, 0]  # half-pixel centres, edges clamped
    np.testing.assert_allclose(out, [0, 63.75, 191.25, 255], atol=1e-4)


def test_center_crop_keeps_the_centre():
    out = images.resize(striped(), (20, 20), "center_crop").numpy()
    assert out.shape == (20, 20, 3)
    for row in out:
        assert stripe_colours(row) == [(colour(1), 10), (colour(2), 10)]
    # Downscaling: the shorter side (20 rows) goes to 10, the 40 columns to 20, of which the central 10 remain.
    small = images.resize(striped(), (10, 10), "center_crop").numpy()
    assert small.shape == (10, 10, 3)
    assert stripe_colours(small[3]) == [(colour(1), 5), (colour(2), 5)]


def test_pad_letterboxes_a_wide_image():
    out = images.resize(striped(), (20, 20), "pad").numpy()
    assert out.shape == (20, 20, 3)
    assert (out[:5] == 0).all() and (out[15:] == 0).all()  # black bands above and below
    for row in out[5:15]:
        assert stripe_colours(row) == [(colour(0), 5), (colour(1), 5), (colour(2), 5), (colour(3), 5)]


def test_pad_pillarboxes_a_tall_image():
    tall = np.transpose(striped(), (1, 0, 2))  # 40 rows x 20 columns, horizontal stripes
    out = images.resize(tall, (20, 20), "pad").numpy()
    assert (out[:, :5] == 0).all() and (out[:, 15:] == 0).all()
    column = out[:, 10]
    assert stripe_colours(column) == [(colour(0), 5), (colour(1), 5), (colour(2), 5), (colour(3), 5)]


def test_non_square_targets():
    image = striped()
    assert images.resize(image, (7, 30), "squash").shape == (7, 30, 3)
    crop = images.resize(image, (20, 30), "center_crop").numpy()  # no scaling; columns 5..34 remain
    assert stripe_colours(crop[0]) == [(colour(0), 5), (colour(1), 10), (colour(2), 10), (colour(3), 5)]
    pad = images.resize(image, (30, 40), "pad").numpy()  # the image fits as is: 5 black rows each side
    assert (pad[:5] == 0).all() and (pad[25:] == 0).all() and np.array_equal(pad[5:25], image)


def test_resize_in_graph_mode_with_unknown_shapes():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def all_modes(image):
        return [images.resize(image, (6, 9), mode) for mode in ("squash", "center_crop", "pad")]

    for shape in [(20, 40, 3), (41, 7, 3), (6, 9, 3), (1, 1, 3)]:
        outs = all_modes(np.full(shape, 9, np.uint8))
        for out in outs:
            assert out.shape == (6, 9, 3)
        assert (outs[0].numpy() == 9).all() and (outs[1].numpy() == 9).all()
    assert all_modes.get_concrete_function().structured_outputs[0].shape == (6, 9, 3)


def test_bad_resize_mode_and_size():
    with pytest.raises(ValueError, match=r"Expected `resize` to be one of squash, center_crop, pad\. "
                                         r"Received: resize='stretch'"):
        images.resize(striped(), (4, 4), "stretch")
    with pytest.raises(ValueError, match="Expected `size`"):
        images.resize(striped(), (4, 0), "squash")
    with pytest.raises(ValueError, match="Expected `size`"):
        images.resize(striped(), 4, "squash")


# --- preprocessing ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_preprocess_equals_keras(mode, rng):
    x = rng.uniform(0, 255, (2, 5, 4, 3)).astype(np.float32)
    before = x.copy()
    ours = images.preprocess(x, mode).numpy()
    expected = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=mode)
    assert np.array_equal(x, before)  # ours does not modify its input
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    single = images.preprocess(x[0], mode).numpy()  # one image (h, w, 3) as well as a batch
    np.testing.assert_allclose(single, expected[0], rtol=0, atol=1e-5)


def test_preprocess_caffe_values_and_modes():
    pixel = np.array([[[10.0, 20.0, 30.0]]], np.float32)
    np.testing.assert_allclose(images.preprocess(pixel, "caffe").numpy()[0, 0],
                               [30 - 103.939, 20 - 116.779, 10 - 123.68], atol=1e-5)
    np.testing.assert_array_equal(images.preprocess(pixel, "none").numpy(), pixel)
    np.testing.assert_allclose(images.preprocess(np.uint8([[[0, 255, 51]]]), "tf").numpy(), [[[-1, 1, -0.6]]],
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"Expected `preprocess` to be one of caffe, tf, torch, none\. "
                                         r"Received: preprocess='bgr'"):
        images.preprocess(pixel, "bgr")


# --- the tf.data pipeline ---------------------------------------------------------------------------------

def grey_files(folder, count):
    """`count` PNGs of different sizes, image i uniformly grey at level 10 * i + 5."""
    paths = []
    for i in range(count):
        path = folder / f"{i:02d}.png"
        Image.new("RGB", (5 + 3 * i, 9 + (7 * i) % 11), (10 * i + 5,) * 3).save(path)
        paths.append(str(path))
    return paths


def test_dataset_keeps_path_order_and_last_partial_batch(tmp_path):
    paths = grey_files(tmp_path, 7)[::-1]  # not in file-name order either
    dataset = images.image_dataset(paths, size=(4, 6), resize="center_crop", preprocess="none", batch_size=3,
                                   labels=list(range(7)))
    batches = list(dataset.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(3, 4, 6, 3), (3, 4, 6, 3), (1, 4, 6, 3)]
    assert all(b[0].dtype == np.float32 for b in batches)
    pixels = np.concatenate([b[0] for b in batches])
    levels = [10 * int(p[-6:-4]) + 5 for p in paths]
    assert [float(v) for v in pixels[:, 2, 3, 0]] == levels
    assert np.array_equal(pixels, np.asarray(levels, np.float32)[:, None, None, None] * np.ones((1, 4, 6, 3)))
    assert np.concatenate([b[1] for b in batches]).tolist() == list(range(7))


def test_dataset_repeats_exactly_and_matches_load_batch(tmp_path):
    paths = [str(noisy_jpeg(tmp_path / f"{i}.jpg", seed=i, size=(30 + i, 20))) for i in range(5)]
    first = np.concatenate(list(images.image_dataset(paths, (16, 16), "squash", "caffe", 2).as_numpy_iterator()))
    second = images.load_batch(paths, size=(16, 16), resize="squash", preprocess="caffe")
    assert np.array_equal(first, second)
    alone = images.load_batch(paths[3:4], size=(16, 16), resize="squash", preprocess="caffe")
    assert np.array_equal(alone[0], first[3])
    expected = images.preprocess(images.resize(images.decode(tf.io.read_file(paths[3])), (16, 16), "squash"),
                                 "caffe").numpy()
    assert np.array_equal(first[3], expected)


def test_flip_mirrors_every_image(tmp_path):
    paths = [str(noisy_jpeg(tmp_path / f"{i}.jpg", seed=i)) for i in range(3)]
    for mode in ("squash", "center_crop", "pad"):
        plain = images.load_batch(paths, size=(12, 10), resize=mode, preprocess="tf")
        flipped = images.load_batch(paths, size=(12, 10), resize=mode, preprocess="tf", flip=True)
        assert not np.array_equal(plain, flipped)
        np.testing.assert_array_equal(flipped, plain[:, :, ::-1])


def test_empty_path_list():
    assert images.load_batch([], size=(4, 5), resize="pad", preprocess="caffe").shape == (0, 4, 5, 3)


def test_dataset_checks_arguments_before_work(tmp_path):
    missing = [str(tmp_path / "missing.jpg")]
    with pytest.raises(ValueError, match="Expected `resize`"):
        images.image_dataset(missing, (4, 4), "crop", "caffe", 2)
    with pytest.raises(ValueError, match="Expected `preprocess`"):
        images.image_dataset(missing, (4, 4), "pad", "BGR", 2)
    with pytest.raises(ValueError, match="Expected `batch_size`"):
        images.image_dataset(missing, (4, 4), "pad", "caffe", 0)
    with pytest.raises(ValueError, match="one label per path"):
        images.image_dataset(missing, (4, 4), "pad", "caffe", 2, labels=[1, 2])
    with pytest.raises(tf.errors.NotFoundError):
        images.load_batch(missing, size=(4, 4), resize="pad", preprocess="caffe")


# --- ImageNet classes -------------------------------------------------------------------------------------

def test_imagenet_wnids_in_keras_order():
    wnids = imagenet.imagenet_wnids()
    assert len(wnids) == 1000 and len(set(wnids)) == 1000
    assert wnids[0] == "n01440764" and wnids[999] == "n15075141"
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids)
    assert wnids == sorted(wnids)  # Keras' index order is the sorted order of ImageNet's class folders
    assert wnids[1] == "n01443537" and wnids[281] == "n02123045" and wnids[504] == "n03063599"


def test_imagenet_names():
    names = imagenet.imagenet_names()
    assert list(names) == imagenet.imagenet_wnids()
    assert names["n01440764"] == "tench" and names["n15075141"] == "toilet_tissue"
    assert names["n02123045"] == "tabby" and names["n03063599"] == "coffee_mug"
    assert all(name and "\t" not in name for name in names.values())


def test_imagenet_table_is_keras_class_index_byte_for_byte():
    """Written back as Keras' imagenet_class_index.json ("i": [wnid, name]), the table has the MD5 that Keras'
    `imagenet_utils.decode_predictions` pins for its download (`file_hash`): the same classes, order and names."""
    names = imagenet.imagenet_names()
    table = {str(i): [wnid, names[wnid]] for i, wnid in enumerate(imagenet.imagenet_wnids())}
    assert hashlib.md5(json.dumps(table).encode()).hexdigest() == "c2c37ea517e94d9795004a39431a14cb"


def test_imagenet_module_does_not_import_tensorflow():
    code = ("import sys, vggbn.storage.imagenet as m; assert len(m.imagenet_wnids()) == 1000; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
