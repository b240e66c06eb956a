"""End to end at full scale: VGG16 itself and real photos in ImageNet layout, offline.

No machine here reaches ImageNet or VGG16's ImageNet weights, so the photos are crops of the two real photos
scikit-learn ships, written as `.JPEG` files (RGB, grayscale and CMYK) under real ImageNet WordNet ids, and VGG16
has random weights (`model.weights: none`): its full-size dense part (25088 -> 4096 -> 4096 -> 1000) is what the
identity check is about, and it does not care what the weights are. A `.keras` classifier of another shape (a
global-average-pooling head) goes through the same stages. Every project here is a copy (`cp -a`) of the
session's demo project (`pipeline`), whose demo stages are done; the small classifier's tests share one full run
(`gap_project`) and each change a copy of it. About 4 minutes of CPU on 2 cores, VGG16 nearly half of it.
"""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import ALWAYS_CHANGED
from project import copy_of, metrics, repro, run, set_param

from vggbn.storage.hashing import file_md5

pytestmark = pytest.mark.slow

WNIDS = ("n01440764", "n02102040", "n02979186")  # tench, English springer, cassette player
IMAGENET_INDEX = (0, 217, 482)  # their outputs in a Keras ImageNet classifier (sorted WordNet ids)
PER_CLASS = {"train": 4, "valid": 2}  # 12 train and 6 valid images: VGG16's conv part runs ~7 images/s here
MODES = ("RGB", "L", "CMYK")  # Pillow modes the photos are saved in: colour, grayscale and CMYK JPEGs
IDENTITY = {"max_abs_diff": 1e-5, "max_abs_diff_logits": 1e-4}  # docs/params.md's bounds for metrics/insert_bn.json


def write_photos(folder: Path, names: list[str], seed: int) -> None:
    """Seeded crops of scikit-learn's two photos (china.jpg, flower.jpg) of varied sizes and aspect ratios, as JPEG.

    The i-th image is saved in Pillow mode MODES[i % 3], so every class folder holds grayscale and CMYK JPEGs.
    """
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two (427, 640, 3) uint8 arrays
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        photo = photos[rng.integers(len(photos))]
        height, width = int(rng.integers(96, 427)), int(rng.integers(96, 640))
        top, left = int(rng.integers(photo.shape[0] - height + 1)), int(rng.integers(photo.shape[1] - width + 1))
        image = Image.fromarray(photo[top:top + height, left:left + width]).convert(MODES[i % len(MODES)])
        image.save(folder / name, format="JPEG", quality=90)


def write_photo_folder(root: Path) -> Path:
    """An ImageNet-layout folder: <root>/{train,valid}/<wnid>/<wnid>_<n>.JPEG, PER_CLASS images per class."""
    for s, (split, count) in enumerate(PER_CLASS.items()):
        for c, wnid in enumerate(WNIDS):
            write_photos(root / split / wnid, [f"{wnid}_{split}_{n}.JPEG" for n in range(count)], seed=10 * s + c)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The photo folder outside any project, as ImageNet would be: an absolute data.root."""
    return write_photo_folder(tmp_path_factory.mktemp("photos"))


def project_copy(pipeline, dest: Path, photo_root: str | Path, **params) -> Path:
    """A copy of the session's demo project pointed at `photo_root`, with cheap fine-tuning and transfer runs.

    The transfer stage runs on the same photos (the demo's digits would cost VGG16 ~75 s of conv features).
    """
    copy_of(pipeline[0], dest)
    settings = {"data.root": str(photo_root), "finetune.epochs": 1, "finetune.batch_size": 4,
                "transfer.root": str(photo_root), "transfer.train": "head", "transfer.lrs": [0.001],
                "transfer.seeds": [0], "transfer.epochs": 1, "transfer.batch_size": 4, **params}
    for key, value in settings.items():
        set_param(dest, key, value)
    return dest


def small_gap_classifier(path: Path, num_classes: int, *, dense_head: bool = True, size: int = 48) -> Path:
    """A small functional classifier of another shape than VGG's: convs, global average pooling, two Dense layers."""
    import keras

    from vggbn.numerics.models import save_model

    init = keras.initializers.GlorotUniform(seed=3)
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", kernel_initializer=init, name="stem")(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu", kernel_initializer=init, name="body")(x)
    x = keras.layers.MaxPooling2D(2, name="body_pool")(x)
    if dense_head:
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        x = keras.layers.Dense(24, activation="relu", kernel_initializer=init, name="hidden")(x)
        x = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=init, name="scores")(x)
    save_model(keras.Model(inputs, x, name="gapnet"), path)
    return path


def assert_identity(project: Path) -> dict:
    identity = metrics(project, "insert_bn")
    for key, bound in IDENTITY.items():
        assert identity[key] <= bound, (key, identity[key])
    assert identity["accuracy_before"] == identity["accuracy_after"]
    return identity


def failure(project: Path) -> tuple[str, str]:
    """(`dvc repro`'s output, the one `error:` line a stage printed) for a run that must fail."""
    result = run(["dvc", "repro"], project, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "Traceback" not in output, output[-4000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output[-4000:]
    return output, errors[0]


def test_every_photo_decodes_to_the_rgb_pillow_shows(photos):
    """The library's decoding (`images.decode`, what every stage reads images with) turns each photo, colour,
    grayscale or CMYK JPEG of its own size, into the (h, w, 3) RGB image Pillow gives: up to JPEG decoders'
    rounding (their IDCT and chroma upsampling differ: here at most 7 of 255, 1 on average)."""
    import tensorflow as tf
    from PIL import Image

    from vggbn.numerics import images

    files = sorted(photos.glob("*/*/*.JPEG"))
    assert len(files) == len(WNIDS) * sum(PER_CLASS.values())
    modes = set()
    for path in files:
        with Image.open(path) as image:
            modes.add(image.mode)
            expected = np.asarray(image.convert("RGB"), dtype=np.int16)
        decoded = images.decode(tf.io.read_file(str(path))).numpy().astype(np.int16)
        assert decoded.shape == expected.shape, (path.name, image.mode)
        difference = np.abs(decoded - expected)
        assert difference.mean() <= 2 and difference.max() <= 16, (path.name, image.mode, difference.max())
    assert modes == set(MODES)  # the fixture's promise: every kind of JPEG was decoded


def test_vgg16_at_full_size(pipeline, photos, tmp_path):
    import keras

    project = project_copy(pipeline, tmp_path, photos, **{"model.source": "vgg16", "model.weights": "none"})
    ran = repro(project)
    assert {"pretrained", "conv_features", "bn_stats", "insert_bn", "finetune", "combine", "transfer"} <= set(ran)
    assert {"demo_data", "demo_model"}.isdisjoint(ran)

    assert metrics(project, "sample") == {"train_images": 12, "valid_images": 6, "rejected": 0}
    with h5py.File(project / "data/features/train.h5") as f:
        assert f["features"].shape == (12, 7, 7, 512) and f.attrs["cut"] == "block5_pool"
        labels, paths = f["labels"][:], f["paths"].asstr()[:]
    # Folder order (0, 1, 2) maps to ImageNet's output order for a 1000-class model.
    assert sorted(set(labels.tolist())) == list(IMAGENET_INDEX)
    for label, path in zip(labels, paths):
        assert IMAGENET_INDEX[WNIDS.index(Path(path).parent.name)] == label
    assert metrics(project, "conv_features")["split_max_abs_diff"] <= 1e-5

    identity = assert_identity(project)
    assert identity["samples"] == 6
    dense = keras.saving.load_model(project / "models/dense_bn.keras", safe_mode=True)
    assert dense.get_layer("fc1").kernel.shape == (25088, 4096)
    assert dense.get_layer("fc2").kernel.shape == (4096, 4096)
    assert dense.get_layer("predictions").kernel.shape == (4096, 1000)
    assert [dense.get_layer(name).moving_mean.shape for name in ("fc1_bn", "fc2_bn")] == [(4096,), (4096,)]
    # Models ship without optimizer state: VGG16's dense part is 124M float32 weights, ~0.5 GB, not three times that.
    assert (project / "models/dense_bn_finetuned.keras").stat().st_size < 0.6e9
    assert metrics(project, "combine")["images"] == 6

    # Random weights come from a fixed seed and saves are byte-reproducible, also at 0.5 GB: rebuilding the
    # classifier gives the same file, and nothing downstream reruns.
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "vgg16"], project)
    built = file_md5(project / "models/pretrained.keras")
    assert repro(project, "--force", "--single-item", "pretrained") == ["pretrained"]
    assert file_md5(project / "models/pretrained.keras") == built
    assert sorted(repro(project)) == ALWAYS_CHANGED
    assert run(["git", "status", "--porcelain"], project).stdout == ""
    print(f"\nVGG16 identity: {identity}")
    shutil.rmtree(project)  # ~5 GB of models and DVC cache; pytest keeps the last three runs' temporary folders


@pytest.fixture(scope="module")
def gap_project(pipeline, tmp_path_factory):
    """(project, stages run): a full `dvc repro` with the small GAP classifier over photos inside the project.

    The photos sit in the project (data.root: photos, a relative root), so a copy of the project (`cp -a`) has
    its own photos to add to.
    """
    base = tmp_path_factory.mktemp("gap")
    model_path = small_gap_classifier(base / "gapnet.keras", num_classes=len(WNIDS))
    project = base / "project"
    project.mkdir()
    project_copy(pipeline, project, "photos", **{"model.source": str(model_path), "model.preprocess": "tf"})
    write_photo_folder(project / "photos")
    return project, repro(project)


def test_another_classifier_shape(gap_project):
    project, ran = gap_project
    assert {"pretrained", "conv_features", "insert_bn", "finetune", "combine", "transfer"} <= set(ran)
    with h5py.File(project / "data/features/train.h5") as f:
        assert f.attrs["cut"] == "body_pool"  # the last layer before the head (global pooling, Dense, Dense)
        assert f["features"].shape == (12, 10, 10, 16)
        assert sorted(set(f["labels"][:].tolist())) == [0, 1, 2]  # as many outputs as folders: folder order
    assert metrics(project, "conv_features")["split_max_abs_diff"] <= 1e-5
    identity = assert_identity(project)
    assert identity["bn_layers"] == 1 and identity["samples"] == 6
    assert metrics(project, "combine")["images"] == 6
    print(f"\nGAP classifier identity (squash): {identity}")


@pytest.mark.parametrize("mode", ["pad"])  # end to end, the param's way to the features; each mode's pixels:
def test_another_resize_mode(gap_project, tmp_path, mode):  # tests/test_images.py
    project = copy_of(gap_project[0], tmp_path)
    set_param(project, "features.resize", mode)
    ran = repro(project, "insert_bn")  # up to the identity check (what follows it runs on features like any other)
    assert {"conv_features", "bn_stats", "insert_bn"} <= set(ran) and "pretrained" not in ran
    with h5py.File(project / "data/features/valid.h5") as new, \
            h5py.File(gap_project[0] / "data/features/valid.h5") as squashed:
        assert json.loads(new.attrs["feature_recipe"])["resize"] == mode
        assert not np.array_equal(new["features"][:], squashed["features"][:])
    assert metrics(project, "conv_features")["split_max_abs_diff"] <= 1e-5
    print(f"\nGAP classifier identity ({mode}): {assert_identity(project)}")


def test_new_images_are_the_only_ones_computed(gap_project, tmp_path):
    project = copy_of(gap_project[0], tmp_path)
    with h5py.File(project / "data/features/train.h5") as f:
        before = dict(zip(f["paths"].asstr()[:], f["features"][:]))
    new = [f"train/{wnid}/{wnid}_train_new.JPEG" for wnid in WNIDS]
    for c, path in enumerate(new):  # sample.train is null: every image is sampled
        write_photos(project / "photos" / Path(path).parent, [Path(path).name], seed=100 + c)
    ran = repro(project, "insert_bn")
    assert {"sample", "conv_features", "insert_bn"} <= set(ran) and "pretrained" not in ran
    counts = metrics(project, "conv_features")
    assert (counts["train_computed"], counts["train_reused"], counts["train_resumed"]) == (3, 12, 0)
    assert (counts["valid_computed"], counts["valid_reused"], counts["valid_resumed"]) == (0, 6, 0)
    with h5py.File(project / "data/features/train.h5") as f:
        after = dict(zip(f["paths"].asstr()[:], f["features"][:]))
    assert sorted(set(after) - set(before)) == new
    for path, row in before.items():
        np.testing.assert_array_equal(after[path], row)
    assert_identity(project)


def test_a_model_without_dense_head_is_a_one_line_error(pipeline, photos, tmp_path):
    model_path = small_gap_classifier(tmp_path / "convs.keras", num_classes=len(WNIDS), dense_head=False)
    project = project_copy(pipeline, tmp_path / "project", photos,
                           **{"model.source": str(model_path), "model.preprocess": "tf"})
    output, error = failure(project)
    assert "has no dense head" in error and "failed to reproduce 'pretrained'" in output  # the first stage to load it


def test_class_count_differing_from_the_outputs_is_a_one_line_error(pipeline, photos, tmp_path):
    model_path = small_gap_classifier(tmp_path / "five.keras", num_classes=5)
    project = project_copy(pipeline, tmp_path / "project", photos,
                           **{"model.source": str(model_path), "model.preprocess": "tf"})
    output, error = failure(project)
    assert "3 classes" in error and "5 outputs" in error and "failed to reproduce 'conv_features'" in output
