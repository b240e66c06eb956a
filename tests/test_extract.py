"""conv features through the real image path: flipped copies, float16 storage, bfloat16 compute, the split check."""

import argparse
import h5py
import numpy as np
import pytest
from PIL import Image

from stages import bn_stats
from vggbn.numerics import extract, images, models
from vggbn.runner.params import parse_params
from vggbn.storage.statistics import StatisticsError, load_statistics, save_statistics
from vggbn.storage import features
from vggbn.numerics.images import ImageInput


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


def extract_to(tmp_path, mini_vgg, root, paths, flip=False, **how):
    conv, _ = models.split(mini_vgg)
    out = tmp_path / f"features-{len(list(tmp_path.glob('features-*')))}.h5"
    extract.extract_split(conv, ImageInput(str(root), 4, "squash", "caffe"),
                          features.FeatureRows.of(paths, [0, 1] * 3, [f"h{i}" for i in range(6)], flip=flip),
                          extract.Extraction("m", **how), out, tmp_path / "work" / out.stem)
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


# --- non-finite values stop where they start ---


@pytest.mark.parametrize("damage, cut, what", [(np.nan, "block2_conv2", "NaN"), (np.inf, None, "infinite values")])
def test_a_model_that_yields_nan_stops_at_the_first_image_naming_it(tmp_path, mini_vgg, photo_folder, damage, cut,
                                                                    what):
    root, paths = photo_folder
    # A damaged model file. The cut layer is linear: a traced Conv2D+BiasAdd+ReLU runs as one fused oneDNN kernel,
    # which on some CPUs turns NaN into 0 (max pooling drops NaN too).
    mini_vgg = models.copy_chain(mini_vgg, name=mini_vgg.name, configure=lambda layer, config: {
        **config, "activation": "linear"} if layer.name == "block2_conv2" else config)
    kernel, bias = mini_vgg.get_layer("block2_conv2").get_weights()
    bias[5] = damage
    mini_vgg.get_layer("block2_conv2").set_weights([kernel, bias])
    conv, _ = models.split(mini_vgg, cut)
    out = tmp_path / "features.h5"
    with pytest.raises(features.NonFiniteFeatures) as caught:
        extract.extract_split(conv, ImageInput(str(root), 4, "squash", "caffe"),
                              features.FeatureRows.of(paths, [0, 1] * 3, [f"h{i}" for i in range(6)]),
                              extract.Extraction("m"), out, tmp_path / "work")
    batch = images.load_batch([str(root / p) for p in paths], size=(32, 32), resize="squash", preprocess="caffe")
    finite = np.isfinite(conv.predict_on_batch(batch)).reshape(len(paths), -1).all(axis=1)
    first = int(np.argmin(finite))  # the first image whose features are not finite: the one named
    assert not finite.all()
    assert str(caught.value).startswith(f"{root}/{paths[first]}: the conv part gives {what} for this image")
    assert "\n" not in str(caught.value)
    assert not out.exists() and not list(tmp_path.glob(".partial-*"))


def test_bn_stats_names_the_layer_units_and_row_of_non_finite_activations(tmp_path, mini_vgg, photo_folder):
    """The issue's case: a feature row of 3.4e38 (a bad write that no check sees) overflows fc1 to infinity."""
    root, paths = photo_folder
    _, out = extract_to(tmp_path, mini_vgg, root, paths)
    with h5py.File(out, "r+") as f:
        row = f["features"][2]
        row[...] = 3.4e38
        f["features"][2] = row
    models.save_model(mini_vgg, tmp_path / "model.keras")
    params = parse_params({"data": {"root": str(root)}, "features": {"batch_size": 4},
                           "bn": {"layers": "dense", "position": "after_activation", "batch_size": 2}})
    paths = argparse.Namespace(model=tmp_path / "model.keras", train=out, sample=tmp_path, out=tmp_path / "s.h5")
    with pytest.raises(StatisticsError, match=rf"^fc1: units .* are not finite on row 2 of {out} "
                                              r"\(image train/c0/img 2\.png\), so their statistics"):
        bn_stats.run(paths, params)
    assert not (tmp_path / "s.h5").exists()


def test_insert_bn_refuses_statistics_that_are_not_finite(tmp_path):
    from vggbn.numerics.moments import Moments

    moments = Moments(3).update(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 4.0]]))
    moments.m2[1] = np.inf
    save_statistics(tmp_path / "stats.h5", {"fc1": moments})
    with pytest.raises(StatisticsError, match=r"stats\.h5: fc1: units 1 have a non-finite mean or "
                                                          r"variance"):
        load_statistics(tmp_path / "stats.h5")
