import keras
import numpy as np
import pytest

from vggbn.numerics import models, surgery
from vggbn.numerics.moments import Moments


def dense_stack(rng, widths, dead_units=0):
    """A random flatten -> dense(relu) x n -> softmax chain; the first `dead_units` of fc1 never fire."""
    inputs = keras.Input((widths[0],))
    x = inputs
    for i, width in enumerate(widths[1:-1], start=1):
        x = keras.layers.Dense(width, activation="relu", name=f"fc{i}")(x)
        x = keras.layers.Dropout(0.5, name=f"drop{i}")(x)
    outputs = keras.layers.Dense(widths[-1], activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    kernel, bias = model.get_layer("fc1").get_weights()
    bias[:dead_units] = -1e3  # always negative before the ReLU: zero after it, variance 0
    model.get_layer("fc1").set_weights([kernel, bias])
    return model


def calibrate(model, x):
    stats = surgery.measure(model, [x[:50], x[50:]])
    return {name: (m.mean, m.variance) for name, m in stats.items()}


@pytest.mark.parametrize("widths", [(20, 16, 10), (64, 48, 32, 7), (30, 8, 8, 8, 3)])
def test_calibrated_bn_is_the_identity(rng, widths):
    model = dense_stack(rng, widths, dead_units=3)
    x = rng.normal(size=(200, widths[0])).astype(np.float32) * 5
    stats = calibrate(model, x)
    assert (stats["fc1"][1][:3] == 0).all()  # the dead units are really there
    with_bn = surgery.insert_bn(model, stats)
    assert [layer.name for layer in with_bn.layers if isinstance(layer, keras.layers.BatchNormalization)] == [
        f"fc{i}_bn" for i in range(1, len(widths) - 1)]
    report, _ = surgery.compare(model, with_bn, [(x, np.zeros(len(x), dtype=int))])
    assert report["max_abs_diff"] <= 1e-5
    assert report["max_abs_diff_logits"] <= 1e-4
    assert report["loss_before"] == pytest.approx(report["loss_after"], abs=1e-5)
    assert_same_predictions(model.predict_on_batch(x), with_bn.predict_on_batch(x))


def test_compare_counts_rows_scores_labelled_batches_and_keeps_points(rng):
    """Rows counted over every batch, loss and accuracy only where labels came, the top-class points asked for."""
    model = dense_stack(rng, (12, 8, 4), dead_units=0)
    with_bn = surgery.insert_bn(model, calibrate(model, rng.normal(size=(100, 12)).astype(np.float32)))
    x = rng.normal(size=(30, 12)).astype(np.float32)
    labelled, points = surgery.compare(model, with_bn, [(x[:20], np.zeros(20, int)), (x[20:], np.ones(10, int))], 25)
    assert labelled["samples"] == 30 and isinstance(labelled["samples"], int) and len(points) == 25
    assert {"loss_before", "loss_after", "accuracy_before", "accuracy_after"} <= set(labelled)
    unlabelled, none = surgery.compare(model, with_bn, [(x[:20], None), (x[20:], None)])
    assert unlabelled == {key: labelled[key] for key in ("max_abs_diff", "max_abs_diff_logits", "samples")}
    assert none == []


def assert_same_predictions(before, after, margin=1e-5):
    """Same top class wherever it is decided: dead ReLUs can collapse logits into exact ties, which any rounding
    breaks either way."""
    top2 = np.sort(before, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > margin
    assert decided.mean() > 0.5  # the check is not vacuous
    np.testing.assert_array_equal(before.argmax(axis=1)[decided], after.argmax(axis=1)[decided])


def test_the_notebooks_calibration_is_not_the_identity(rng):
    # gamma = variance (the 2017 notebook) changes the outputs; our check must see that.
    model = dense_stack(rng, (20, 16, 10))
    x = rng.normal(size=(100, 20)).astype(np.float32) * 5
    stats = calibrate(model, x)
    with_bn = surgery.insert_bn(model, stats)
    mean, var = stats["fc1"]
    with_bn.get_layer("fc1_bn").set_weights([var, mean, mean, var])
    report, _ = surgery.compare(model, with_bn, [(x, np.zeros(len(x), dtype=int))])
    assert report["max_abs_diff_logits"] > 1e-2


def test_bn_model_has_its_own_weights(rng):
    model = dense_stack(rng, (20, 16, 10))
    with_bn = surgery.insert_bn(model, calibrate(model, rng.normal(size=(100, 20)).astype(np.float32)))
    kernel = with_bn.get_layer("fc1").kernel
    kernel.assign(kernel.numpy() * 0)
    assert np.abs(model.get_layer("fc1").get_weights()[0]).sum() > 0


def test_calibrated_weights_order_and_values():
    gamma, beta, moving_mean, moving_variance = surgery.calibrated_weights(np.array([1.0, 0.0]), np.array([4.0, 0.0]))
    np.testing.assert_allclose(gamma, np.sqrt([4.0 + 1e-3, 1e-3]), rtol=1e-6)
    np.testing.assert_array_equal(beta, [1.0, 0.0])
    np.testing.assert_array_equal(moving_mean, [1.0, 0.0])
    np.testing.assert_array_equal(moving_variance, [4.0, 0.0])
    with pytest.raises(ValueError, match="non-negative"):
        surgery.calibrated_weights(np.array([0.0]), np.array([-1.0]))


def test_unknown_layer_in_statistics_is_an_error(rng):
    model = dense_stack(rng, (20, 16, 10))
    with pytest.raises(ValueError, match="fc9"):
        surgery.insert_bn(model, {"fc9": (np.zeros(16), np.ones(16))})


def test_frozen_calibrated_bn_keeps_the_identity_in_training_mode(rng):
    # Keras 3: a BN layer with trainable=False uses its moving statistics even when called with training=True.
    model = dense_stack(rng, (20, 16, 10))
    x = rng.normal(size=(100, 20)).astype(np.float32)
    with_bn = surgery.insert_bn(model, calibrate(model, x))
    with_bn.get_layer("fc1_bn").trainable = False
    tapped = surgery.tap_model(with_bn, ["fc1", "fc1_bn"])
    before, after = tapped(x, training=True)
    np.testing.assert_allclose(np.asarray(after), np.asarray(before), atol=1e-5)


def test_measure_on_the_dense_part_of_a_mini_vgg(mini_vgg, rng):
    conv, dense = models.split(mini_vgg)
    feats = conv.predict_on_batch(rng.uniform(0, 255, size=(16, 32, 32, 3)).astype(np.float32))
    stats = surgery.measure(dense, [feats])
    assert list(stats) == ["fc1", "fc2"] and all(isinstance(m, Moments) for m in stats.values())
    fc1 = surgery.tap_model(dense, ["fc1"]).predict_on_batch(feats)
    np.testing.assert_allclose(stats["fc1"].mean, fc1.mean(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("position", ["after_activation", "before_activation"])
@pytest.mark.parametrize("where", ["dense", "conv", "all"])
def test_every_placement_is_the_identity_on_a_mini_vgg(mini_vgg, rng, where, position):
    x = rng.uniform(0, 255, size=(24, 32, 32, 3)).astype(np.float32) - 120
    names = {"dense": surgery.hidden_dense_names(mini_vgg), "conv": surgery.conv_names(mini_vgg)}
    names["all"] = names["conv"] + names["dense"]
    stats = surgery.measure(mini_vgg, [x[:10], x[10:]], names[where], position)
    with_bn = surgery.insert_bn(mini_vgg, {n: (m.mean, m.variance) for n, m in stats.items()}, position)
    added = [layer.name for layer in with_bn.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert added == [f"{name}_bn" for name in names[where]]
    if position == "before_activation":
        assert with_bn.get_layer(names[where][0]).get_config()["activation"] == "linear"
        assert with_bn.get_layer(f"{names[where][0]}_act").get_config()["activation"] == "relu"
    report, _ = surgery.compare(mini_vgg, with_bn, [(x, np.zeros(len(x), dtype=int))])
    assert report["max_abs_diff"] <= 1e-5 and report["max_abs_diff_logits"] <= 1e-4


def test_pre_activation_statistics_differ_from_post_activation(mini_vgg, rng):
    x = rng.uniform(0, 255, size=(16, 32, 32, 3)).astype(np.float32) - 120
    pre = surgery.measure(mini_vgg, [x], ["block1_conv1"], "before_activation")["block1_conv1"]
    post = surgery.measure(mini_vgg, [x], ["block1_conv1"], "after_activation")["block1_conv1"]
    assert (pre.mean < 0).any() and (post.mean >= 0).all()  # the ReLU cuts the negative pre-activations


def test_surgery_refuses_a_model_that_is_not_a_chain():
    inputs = keras.Input((8,))
    a = keras.layers.Dense(4, activation="relu", name="a")(inputs)
    b = keras.layers.Dense(4, activation="relu", name="b")(a)
    outputs = keras.layers.Dense(2, activation="softmax", name="out")(keras.layers.Add(name="skip")([a, b]))
    model = keras.Model(inputs, outputs, name="skippy")
    with pytest.raises(models.ModelError, match="not a chain of layers at 'skip'"):
        surgery.insert_bn(model, {"a": (np.zeros(4), np.ones(4))})


@pytest.mark.slow
def test_bn_everywhere_in_full_size_vgg16_is_the_identity(rng):
    """VGG16 at 224x224 (random weights: ImageNet's cannot be downloaded here), BN after all 13 convs and fc1, fc2
    (every placement is covered on the mini VGG above; this is the one at full size)."""
    position = "after_activation"
    vgg = models.vgg16("none")
    images = rng.uniform(0, 255, size=(3, 224, 224, 3)).astype(np.float32) - 120
    names = surgery.targets(vgg, "all")
    assert len(names) == 15
    stats = surgery.measure(vgg, [images[:2], images[2:]], names, position)
    with_bn = surgery.insert_bn(vgg, {n: (m.mean, m.variance) for n, m in stats.items()}, position)
    report, _ = surgery.compare(vgg, with_bn, [(images, np.zeros(3, dtype=int))])
    # Random weights give near-uniform probabilities (max p about 0.002), which hide errors: check the logits too.
    assert report["max_abs_diff"] <= 1e-5 and report["max_abs_diff_logits"] <= 1e-4
