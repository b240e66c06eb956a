"""Unit tests of the stages and modules that had none: scoring, demo_data, demo_model and combine, each run
in-process on tiny inputs (`run(paths, params)`, as `stage.main` calls it)."""

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from vggbn.numerics.scoring import LOSS_CLIP, Score
from vggbn.runner.params import parse_params


def test_score_is_the_mean_crossentropy_and_accuracy_over_every_batch():
    p1 = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    p2 = np.array([[0.0, 1.0, 0.0]])
    score = Score().add(p1, [0, 1]).add(p2, np.array([0]))
    expected_loss = -(np.log(0.7) + np.log(0.3) + np.log(LOSS_CLIP)) / 3  # a 0 probability is clipped, as Keras does
    assert score.count == 3
    assert score.result() == pytest.approx({"loss": expected_loss, "accuracy": 1 / 3})


def test_score_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        Score().result()


def demo_params(**demo):
    return parse_params({"demo": {"size": 16, "classes": [0, 1, 2], "transfer_train": 3, "seed": 0, **demo}})


def test_demo_data_writes_a_stratified_split_and_a_transfer_task(tmp_path):
    from stages import demo_data

    paths = argparse.Namespace(out=tmp_path / "demo", transfer_out=tmp_path / "transfer")
    metrics = demo_data.run(paths, demo_params()).metrics
    counts = {split: {d.name: len(list(d.glob("*.png"))) for d in (tmp_path / "demo" / split).iterdir()}
              for split in ("train", "valid")}
    assert sorted(counts["train"]) == sorted(counts["valid"]) == ["0", "1", "2"]
    assert metrics["train_images"] == sum(counts["train"].values())
    assert metrics["valid_images"] == sum(counts["valid"].values())
    # scikit-learn's digits hold ~180 of each digit; the 0.2 split is stratified, so each digit's share is ~20%
    for digit in "012":
        share = counts["valid"][digit] / (counts["valid"][digit] + counts["train"][digit])
        assert 0.18 < share < 0.22
    transfer_train = {d.name: len(list(d.glob("*.png"))) for d in (tmp_path / "transfer" / "train").iterdir()}
    assert transfer_train == {str(d): 3 for d in range(3, 10)}  # the held-back digits, 3 train images each
    assert metrics["transfer_classes"] == 7 and metrics["transfer_train_images"] == 21
    image = Image.open(next((tmp_path / "demo" / "train" / "0").glob("*.png")))
    assert image.size == (16, 16) and image.mode == "RGB"
    # the same params give the same files
    again = argparse.Namespace(out=tmp_path / "again", transfer_out=tmp_path / "again_transfer")
    demo_data.run(again, demo_params())
    for path in sorted((tmp_path / "demo").rglob("*.png")):
        assert path.read_bytes() == (tmp_path / "again" / path.relative_to(tmp_path / "demo")).read_bytes()


@pytest.fixture(scope="module")
def trained_demo(tmp_path_factory):
    """The demo_model stage on a 3-digit, 16-pixel demo folder, 2 epochs: (folder, paths, metrics)."""
    from stages import demo_data, demo_model

    tmp = tmp_path_factory.mktemp("demo")
    params = demo_params(epochs=2, batch_size=32)
    demo_data.run(argparse.Namespace(out=tmp / "demo", transfer_out=tmp / "transfer"), params)
    paths = argparse.Namespace(data=tmp / "demo", out=tmp / "demo.keras", live=tmp / "live")
    return tmp, paths, demo_model.run(paths, params).metrics


def test_demo_model_trains_a_classifier_without_bn_that_learns(trained_demo):
    import keras

    from vggbn.numerics.models import load_model_file

    _, paths, metrics = trained_demo
    model = load_model_file(paths.out)
    assert model.output_shape == (None, 3)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert metrics["valid_accuracy"] > 0.6  # three digits: chance is 1/3
    assert metrics["params"] == model.count_params()
    last = json.loads((paths.live / "metrics.json").read_text())  # dvclive's summary of the last epoch
    assert last["step"] == 1 and last["eval"]["accuracy"] == pytest.approx(metrics["valid_accuracy"])
    curve = (paths.live / "plots" / "metrics" / "eval" / "accuracy.tsv").read_text().splitlines()
    assert len(curve) == 3  # a header and one row per epoch


def test_combine_saves_the_joined_model_and_scores_it_beside_the_original(trained_demo, tmp_path):
    from stages import combine
    from vggbn.numerics import models
    from vggbn.storage.manifest import Row, Sample, write_sample

    folder, demo_paths, _ = trained_demo
    original = models.load_model_file(demo_paths.out)
    conv, dense = models.split(original)
    models.save_model(conv, tmp_path / "conv.keras")
    models.save_model(dense, tmp_path / "dense.keras")
    valid = sorted((folder / "demo" / "valid").rglob("*.png"))
    rows = [Row(str(p.relative_to(folder / "demo")), int(p.parent.name), "-") for p in valid]
    write_sample(tmp_path / "sample", Sample(["0", "1", "2"], rows, rows, []))
    params = parse_params({"data": {"root": str(folder / "demo")}, "features": {"batch_size": 16}})
    paths = argparse.Namespace(pretrained=demo_paths.out, conv=tmp_path / "conv.keras",
                               dense=tmp_path / "dense.keras", sample=tmp_path / "sample",
                               out=tmp_path / "combined.keras", weights=tmp_path / "combined.weights.h5")
    result = combine.run(paths, params)
    # the split, rejoined, is the original: same scores to the last bit, on every valid image
    assert result.metrics["images"] == len(valid)
    assert result.metrics["combined_accuracy"] == result.metrics["original_accuracy"]
    assert result.metrics["combined_loss"] == pytest.approx(result.metrics["original_loss"], abs=1e-6)
    combined = models.load_model_file(paths.out)
    assert combined.name == f"{original.name}_bn"
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(combined.predict(x, verbose=0), original.predict(x, verbose=0), atol=1e-6)
    fresh = models.copy_chain(original, name="fresh")  # any model of the same structure loads the weights file
    for weight in fresh.weights:
        weight.assign(np.zeros(weight.shape, weight.dtype))
    fresh.load_weights(paths.weights)
    np.testing.assert_allclose(fresh.predict(x, verbose=0), original.predict(x, verbose=0), atol=1e-6)
    table = result.plots["confusion"]
    assert table.header == ("actual", "predicted") and len(table.rows) == len(valid)
    assert {actual for actual, _ in table.rows} == {"0", "1", "2"}
    assert sum(a == p for a, p in table.rows) / len(valid) == result.metrics["combined_accuracy"]
