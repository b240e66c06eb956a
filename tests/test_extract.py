"""conv features through the real image path: flipped copies, float16 storage, bfloat16 compute, the split check."""

import h5py
import numpy as np
import pytest
from PIL import Image

from vggbn import extract, images, models
from vggbn.images import ImageInput


@pytest.fixture
def photo_folder(tmp_path, rng):
    root = tmp_path / "data"
    paths = []
    for i in range(6):
        folder = root / "train" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        array = rng.integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"img {i}.png")
        paths.append(f"train/c{i % 2}/img {i}.png")
    return root, paths


def extract_to(tmp_path, mini_vgg, root, paths, **options):
    conv, _ = models.split(mini_vgg)
    out = tmp_path / f"features-{len(list(tmp_path.glob('features-*')))}.h5"
    extract.extract_split(conv=conv, model_md5="m", inputs=ImageInput(str(root), 4, "squash", "caffe"), paths=paths,
                          labels=[0, 1] * 3, md5s=[f"h{i}" for i in range(6)], out_path=out,
                          work_dir=tmp_path / "work" / out.stem, **options)
    return conv, out


def test_features_equal_the_conv_part_on_the_images(tmp_path, mini_vgg, photo_folder):
    root, paths = photo_folder
    conv, out = extract_to(tmp_path, mini_vgg, root, paths)
    batch = images.load_batch([str(root / p) for p in paths], size=(32, 32), resize="squash", preprocess="caffe")
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["features"][:], conv.predict_on_batch(batch), rtol=1e-5, atol=1e-5)
        assert list(f["paths"].asstr()[:]) == paths and not f["flipped"][:].any()


def test_flip_adds_a_flipped_copy_of_every_image(tmp_path, mini_vgg, photo_folder):
    root, paths = photo_folder
    conv, out = extract_to(tmp_path, mini_vgg, root, paths, flip=True)
    flipped = images.load_batch([str(root / p) for p in paths], size=(32, 32), resize="squash",
                                preprocess="caffe", flip=True)
    with h5py.File(out) as f:
        assert f["features"].shape[0] == 12 and list(f["flipped"][:]) == [False] * 6 + [True] * 6
        assert list(f["labels"][:]) == [0, 1] * 6
        np.testing.assert_allclose(f["features"][6:], conv.predict_on_batch(flipped), rtol=1e-5, atol=1e-5)
        assert not np.allclose(f["features"][:6], f["features"][6:])


def test_float16_storage_and_bfloat16_compute_stay_close(tmp_path, mini_vgg, photo_folder):
    root, paths = photo_folder
    _, exact = extract_to(tmp_path, mini_vgg, root, paths)
    _, half = extract_to(tmp_path, mini_vgg, root, paths, dtype="float16")
    _, bf16 = extract_to(tmp_path, mini_vgg, root, paths, compute="bfloat16")
    with h5py.File(exact) as a, h5py.File(half) as b, h5py.File(bf16) as c:
        assert b["features"].dtype == np.float16
        reference = a["features"][:]
        scale = np.abs(reference).max()
        assert np.abs(b["features"][:].astype(np.float32) - reference).max() <= 1e-3 * scale
        bf16_error = np.abs(c["features"][:] - reference).max()
        assert 0 < bf16_error <= 0.05 * scale  # bf16 really ran (not exact), and stays near fp32


def test_split_check_is_exact_in_float32(tmp_path, mini_vgg, photo_folder):
    root, paths = photo_folder
    _, out = extract_to(tmp_path, mini_vgg, root, paths)
    check = extract.check_split(model=mini_vgg, cut=None, inputs=ImageInput(str(root), 4, "squash", "caffe"),
                                feature_path=out)
    assert check["split_checked_images"] == 6 and check["split_max_abs_diff"] <= 1e-6
