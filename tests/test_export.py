"""`vggbn export`: a SavedModel that a fresh process loads with tf.saved_model.load and that serves raw images (encoded
files, or uint8 arrays of any size) with `vggbn predict`'s answers; its classes and model card beside it."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggbn import cli

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "fish"]
IMAGE_SIZES = [(40, 60), (32, 32), (50, 20), (33, 47)]  # not square and not the input size: the resize matters

SERVE = """
import json, sys
import tensorflow as tf
served = tf.saved_model.load(sys.argv[1])
files = sys.argv[2:]
encoded = served.signatures["serving_default"](images=tf.constant([open(f, "rb").read() for f in files]))
# decoded by TensorFlow as predict decodes them (Pillow's JPEG decoder rounds differently)
pixels = [served.signatures["serve_pixels"](pixels=tf.io.decode_image(open(f, "rb").read(), channels=3)[None])
          for f in files]
print(json.dumps({"encoded": encoded["probabilities"].numpy().tolist(),
                  "names": [n.decode() for n in encoded["class_name"].numpy()],
                  "pixels": [p["probabilities"].numpy()[0].tolist() for p in pixels]}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A project folder (a trained-looking model, params with center_crop, classes, metrics, images) and the
    `vggbn export` of it."""
    from vggbn.numerics.models import build_demo_classifier, save_model

    root = tmp_path_factory.mktemp("export")
    (root / "models").mkdir()
    save_model(build_demo_classifier(input_size=32, num_classes=3, filters=(4, 8), dense_units=8, seed=2),
               root / "models" / "combined.keras")
    (root / "params.yaml").write_text("features:\n  resize: center_crop\n  batch_size: 3\n")
    (root / "data" / "sample").mkdir(parents=True)
    (root / "data" / "sample" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "metrics").mkdir()
    (root / "metrics" / "insert_bn.json").write_text(json.dumps({"max_abs_diff": 1.8e-07, "samples": 253}))
    (root / "metrics" / "combine.json").write_text(json.dumps({"combined_accuracy": 0.996, "images": 253}))
    rng = np.random.default_rng(0)
    images = []
    for i, (height, width) in enumerate(IMAGE_SIZES):
        name = f"img{i}.{'jpg' if i == 3 else 'png'}"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / name)
        images.append(name)
    cwd, said, predicted = os.getcwd(), io.StringIO(), io.StringIO()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(said):
            assert cli.main(["export"]) == 0
        with contextlib.redirect_stdout(predicted):
            assert cli.main(["predict", "--json", "--top", "3", *images]) == 0
    finally:
        os.chdir(cwd)
    return root, images, said.getvalue(), json.loads(predicted.getvalue())


def test_a_fresh_process_serves_raw_images_with_predicts_answers(exported):
    root, images, _, predicted = exported
    expected = np.array([[p["probability"] for p in sorted(entry["predictions"], key=lambda p: p["index"])]
                         for entry in predicted["images"]])
    done = subprocess.run([sys.executable, "-c", SERVE, str(root / "models" / "serving"), *images], cwd=root,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(served["encoded"], expected, atol=1e-6)
    np.testing.assert_allclose(served["pixels"], expected, atol=1e-6)
    assert served["names"] == [CLASSES[int(np.argmax(row))] for row in expected]
    assert len({tuple(np.round(row, 3)) for row in expected}) == len(images)  # different images, different answers


def test_the_export_carries_its_classes_and_model_card(exported):
    root, _, out, _ = exported
    folder = root / "models" / "serving"
    assert f"{Path('models/serving')}: SavedModel" in out
    assert (folder / "saved_model.pb").is_file() and (folder / "classes.txt").read_text().split() == CLASSES
    card = (folder / "README.md").read_text()
    for text in ("center_crop", "caffe", "32x32", "`cat`, `dog`, `fish`", "serving_default", "serve_pixels",
                 "`insert_bn.max_abs_diff`: 1.8e-07", "`combine.combined_accuracy`: 0.9960", "tensorflow 2.",
                 "keras 3."):
        assert text in card, text
    assert not list(folder.parent.glob(".partial-*"))


def test_the_api_exports_a_model_object(tmp_path, mini_vgg):
    import tensorflow as tf

    import vggbn

    vggbn.export_serving(mini_vgg, tmp_path / "served", resize="pad", preprocess="tf")
    served = tf.saved_model.load(str(tmp_path / "served"))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 20, 50, 3), dtype=np.uint8)
    answer = served.signatures["serve_pixels"](pixels=tf.constant(pixels))
    from vggbn.numerics import images

    batch = images.preprocess(tf.stack([images.resize(p, (32, 32), "pad") for p in pixels]), "tf")
    np.testing.assert_allclose(answer["probabilities"].numpy(), mini_vgg.predict(batch, verbose=0), atol=1e-6)
    assert (tmp_path / "served" / "classes.txt").read_text().split() == ["0", "1", "2", "3", "4"]
    with pytest.raises(vggbn.VggbnError, match="2 class names for a model of 5 outputs"):
        vggbn.export_serving(mini_vgg, tmp_path / "bad", class_names=["a", "b"])


def test_served_photos_are_turned_as_their_exif_says(exported, tmp_path):
    """A phone's portrait photos (pixels stored sideways, EXIF orientation 6 or 8) in one batch with an upright one:
    the encoded signature answers what the pixels signature answers for each upright image."""
    import tensorflow as tf

    root, _, _, _ = exported
    served = tf.saved_model.load(str(root / "models" / "serving"))
    stored = np.random.default_rng(3).integers(0, 256, (30, 52, 3), dtype=np.uint8)
    files, upright = [], []
    for orientation, turns in ((6, -1), (1, 0), (8, 1)):  # rot90 turns (counter-clockwise) that stand it up
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.jpg"
        Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
        files.append(path.read_bytes())
        upright.append(np.rot90(tf.io.decode_image(files[-1], channels=3).numpy(), turns))
    encoded = served.signatures["serving_default"](images=tf.constant(files))["probabilities"].numpy()
    for i, pixels in enumerate(upright):
        answer = served.signatures["serve_pixels"](pixels=tf.constant(np.ascontiguousarray(pixels))[None])
        np.testing.assert_allclose(encoded[i], answer["probabilities"].numpy()[0], atol=1e-6)
    assert not np.allclose(encoded[0], encoded[1], atol=1e-4)  # the turn changed the answer
