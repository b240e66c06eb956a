"""The public API (`vggbn.<name>`): calibrated BN inserted into a model built here, from a tf.data set, with the
identity measured; statistics saved, loaded and merged; the README's example run outside the project folder."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vggbn

ROOT = Path(__file__).resolve().parents[1]


def dense_head(sequential: bool):
    import keras

    layers = [keras.layers.Dense(12, activation="relu", name="fc1"), keras.layers.Dropout(0.5, name="drop"),
              keras.layers.Dense(10, activation="relu", name="fc2"),
              keras.layers.Dense(4, activation="softmax", name="predictions")]
    keras.utils.set_random_seed(3)
    if sequential:
        return keras.Sequential([keras.Input((6,)), *layers], name="seq")
    x = inputs = keras.Input((6,))
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name="func")


def features(rows=300, seed=0):
    return (np.random.default_rng(seed).normal(2.0, 3.0, size=(rows, 6))).astype(np.float32)


def dataset(x, labels=True, batch=32):
    import tensorflow as tf

    y = np.arange(len(x)) % 4
    return tf.data.Dataset.from_tensor_slices((x, y) if labels else x).batch(batch)


@pytest.mark.parametrize("sequential", [False, True], ids=["functional", "sequential"])
@pytest.mark.parametrize("position", ["after_activation", "before_activation"])
def test_insert_calibrated_bn_keeps_what_the_model_computes(sequential, position):
    import keras

    model = dense_head(sequential)
    x = features()
    result = vggbn.insert_calibrated_bn(model, dataset(x), position=position)
    bn = [layer for layer in result.model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert [layer.name for layer in bn] == ["fc1_bn", "fc2_bn"]
    assert result.samples == len(x) and result.max_abs_diff < 1e-5 and result.max_abs_diff_logits < 1e-4
    np.testing.assert_allclose(result.model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    # calibrated, not merely the identity: BN's moving mean is the mean of what the layer gives over the data
    tap = keras.Model(model.inputs, model.get_layer("fc1").output) if not sequential else None
    if tap is not None and position == "after_activation":
        np.testing.assert_allclose(bn[0].moving_mean.numpy(), tap.predict(x, verbose=0).mean(axis=0), rtol=1e-5,
                                   atol=1e-6)
    assert result.statistics.position == position and result.statistics.count("fc1") == len(x)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)  # untouched


def test_statistics_save_load_and_merge(tmp_path):
    model = dense_head(False)
    a, b = features(200, seed=1), features(100, seed=2)
    whole = vggbn.measure_statistics(model, dataset(np.concatenate([a, b])))
    merged = vggbn.measure_statistics(model, dataset(a, labels=False)).merge(
        vggbn.measure_statistics(model, b))  # a dataset without labels, and a plain array
    whole.save(tmp_path / "stats.h5")
    loaded = vggbn.BnStatistics.load(tmp_path / "stats.h5")
    for other in (merged, loaded):
        assert other.layers == ["fc1", "fc2"] and other.count("fc2") == 300
        for layer in other.layers:
            np.testing.assert_allclose(other.mean(layer), whole.mean(layer), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(other.variance(layer), whole.variance(layer), rtol=1e-10, atol=1e-12)
    again = vggbn.insert_calibrated_bn(model, dataset(a), statistics=loaded)
    assert again.max_abs_diff < 1e-5
    with pytest.raises(ValueError, match="cannot merge"):
        whole.merge(vggbn.measure_statistics(model, a, position="before_activation"))


def test_conv_layers_of_a_whole_classifier_from_images(mini_vgg):
    import tensorflow as tf

    images = np.random.default_rng(0).uniform(-100, 100, size=(40, 32, 32, 3)).astype(np.float32)
    result = vggbn.insert_calibrated_bn(mini_vgg, tf.data.Dataset.from_tensor_slices(images).batch(16), layers="all")
    assert vggbn.bn_targets(mini_vgg, "all") == result.statistics.layers
    assert len(result.statistics.layers) == 6 and result.max_abs_diff < 1e-5
    assert result.statistics.count("block1_conv1") == 40 * 32 * 32  # a channel pools every pixel


def test_bad_arguments_are_named():
    model = dense_head(False)
    with pytest.raises(ValueError, match="Expected `layers` to be one of dense, conv, all. Received: layers='fc'"):
        vggbn.insert_calibrated_bn(model, features(), layers="fc")
    with pytest.raises(ValueError, match="Expected `position`"):
        vggbn.measure_statistics(model, features(), position="middle")
    with pytest.raises(ValueError, match="Received neither"):
        vggbn.insert_calibrated_bn(model)
    with pytest.raises(vggbn.VggbnError, match="no layers that get BN"):
        vggbn.measure_statistics(model, features(), layers="conv")
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        vggbn.nothing  # noqa: B018


def test_the_readmes_example_runs_outside_the_project(tmp_path):
    """In a fresh process whose folder is not the project's: `import vggbn`, insert BN, save, load back."""
    text = (ROOT / "README.md").read_text()
    example = re.search(r"## Use it from Python\n.*?```python\n(.*?)```", text, re.S).group(1)
    check = ("\nimport keras\nloaded = keras.saving.load_model('model_bn.keras')\n"
             "assert [l.name for l in loaded.layers if 'bn' in l.name] == ['fc1_bn']\n"
             "x = np.random.default_rng(1).normal(size=(8, 20))\n"
             "assert np.allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)\n"
             "assert again.model.get_weights()[2].tolist() == result.model.get_weights()[2].tolist()\n"
             "print('ok', vggbn.__file__)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", example + check], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok " + str(ROOT / "vggbn"))
    assert (tmp_path / "bn_stats.h5").is_file()


def test_import_vggbn_imports_no_tensorflow_and_the_package_is_typed():
    code = "import sys, vggbn; assert callable(vggbn.VggbnError); print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert (ROOT / "vggbn" / "py.typed").is_file()
