import keras
import numpy as np
import pytest

from vggbn.numerics import models


def test_split_and_join_reproduce_the_model(mini_vgg, rng):
    x = rng.uniform(0, 255, size=(4, 32, 32, 3)).astype(np.float32)
    conv, dense = models.split(mini_vgg)
    assert conv.layers[-1].name == "block2_pool"
    np.testing.assert_array_equal(dense.predict_on_batch(conv.predict_on_batch(x)), mini_vgg.predict_on_batch(x))
    joined = models.join(conv, dense, name="joined")
    assert [layer.name for layer in joined.layers] == [layer.name for layer in mini_vgg.layers]
    np.testing.assert_array_equal(joined.predict_on_batch(x), mini_vgg.predict_on_batch(x))


def test_cut_at_an_earlier_layer(mini_vgg, rng):
    x = rng.uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    conv, dense = models.split(mini_vgg, "block2_conv2")
    assert conv.output.shape[1:] == (16, 16, 16)
    assert [layer.name for layer in dense.layers][1:3] == ["block2_pool", "flatten"]
    np.testing.assert_allclose(dense.predict_on_batch(conv.predict_on_batch(x)), mini_vgg.predict_on_batch(x),
                               atol=1e-6)


def test_bad_cuts_name_the_key(mini_vgg):
    with pytest.raises(models.ModelError, match="features.cut: .*no layer 'block9_pool'"):
        models.split(mini_vgg, "block9_pool")
    with pytest.raises(models.ModelError, match="features.cut: 'fc1' is inside the dense head"):
        models.split(mini_vgg, "fc1")


def test_global_pooling_head():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(x))
    assert models.default_cut(model) == "conv"


def test_no_dense_head_is_a_one_line_error():
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="conv")(inputs), name="fcn")
    with pytest.raises(models.ModelError, match="no dense head"):
        models.default_cut(model)


def test_model_file_with_a_lambda_is_refused(tmp_path):
    inputs = keras.Input((4,))
    x = keras.layers.Lambda(lambda t: t * 2)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x)))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(models.ModelError, match="Lambda"):
        models.load_model_file(tmp_path / "lambda.keras")


def test_missing_model_file_names_it(tmp_path):
    with pytest.raises(models.ModelError, match="nothing.keras: model file not found"):
        models.load_model_file(tmp_path / "nothing.keras")


def test_vgg16_with_random_weights_splits_at_block5_pool():
    vgg = models.vgg16("none")
    conv, dense = models.split(vgg)
    assert conv.output.shape[1:] == (7, 7, 512)
    assert [layer.name for layer in dense.layers][1:] == ["flatten", "fc1", "fc2", "predictions"]
    assert models.input_size(vgg) == (224, 224)


def test_saved_models_are_byte_reproducible_and_load_safely(mini_vgg, tmp_path, rng):
    import time

    models.save_model(mini_vgg, tmp_path / "a.keras")
    time.sleep(1.1)  # Keras stamps the save time to the second
    models.save_model(mini_vgg, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.keras", "b.keras"]  # nothing staged left behind
    loaded = models.load_model_file(tmp_path / "a.keras")
    x = rng.uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_on_batch(x), mini_vgg.predict_on_batch(x))


def test_layer_names_known_without_tensorflow_match_the_models(mini_vgg, tmp_path):
    from vggbn.runner.layer_names import DEMO_LAYERS, VGG16_LAYERS, layer_names

    # The input layer's name is numbered per process by Keras (input_layer_4); no one cuts there.
    assert [layer.name for layer in models.vgg16("none").layers][1:] == VGG16_LAYERS[1:]
    assert [layer.name for layer in models.build_demo_classifier().layers][1:] == DEMO_LAYERS[1:]
    models.save_model(mini_vgg, tmp_path / "mini.keras")
    assert layer_names(str(tmp_path / "mini.keras")) == [layer.name for layer in mini_vgg.layers]
    assert layer_names(str(tmp_path / "missing.keras")) is None


def test_predictor_is_traced_once_and_computes_what_predict_on_batch_does(mini_vgg, rng):
    """Keras' predict_on_batch traces again for a new batch size (and TensorFlow warns of retracing when several
    models do so in a row, as conv_features' split check did): the predictor traces once."""
    conv, dense = models.split(mini_vgg)
    batches = [rng.uniform(0, 255, size=(n, 32, 32, 3)).astype(np.float32) for n in (5, 3, 7, 1, 5, 3)]
    whole, dense_part = models.predictor(mini_vgg), models.predictor(dense)
    for x in batches:
        np.testing.assert_array_equal(whole(x), mini_vgg.predict_on_batch(x))
        features = conv.predict_on_batch(x)
        np.testing.assert_array_equal(dense_part(features), dense.predict_on_batch(features))
    assert whole.function.experimental_get_tracing_count() == 1
    assert dense_part.function.experimental_get_tracing_count() == 1
    assert mini_vgg.predict_function.experimental_get_tracing_count() > 1  # what the predictor saves


def test_predictor_returns_every_output(mini_vgg, rng):
    x = rng.uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    two = keras.Model(mini_vgg.input, [mini_vgg.get_layer("fc1").output, mini_vgg.output])
    fc1, probabilities = models.predictor(two)(x)
    assert fc1.shape == (2, 32) and isinstance(fc1, np.ndarray)
    np.testing.assert_array_equal(probabilities, mini_vgg.predict_on_batch(x))


@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_a_chain_copy_keeps_every_layer_and_computes_the_same(kind, rng):
    """A Sequential model does not list its InputLayer: its first layer (here Flatten) is copied too."""
    layers = [keras.layers.Flatten(), keras.layers.Dense(6, activation="relu"), keras.layers.Dense(3)]
    if kind == "sequential":
        model = keras.Sequential([keras.Input((2, 2, 4)), *layers])
    else:
        inputs = keras.Input((2, 2, 4), name="features")
        x = inputs
        for layer in layers:
            x = layer(x)
        model = keras.Model(inputs, x)
    copy = models.copy_chain(model, name="copy")
    assert [type(layer).__name__ for layer in copy.layers] == ["InputLayer", "Flatten", "Dense", "Dense"]
    if kind == "functional":
        assert copy.layers[0].name == "features"
    x = rng.standard_normal((5, 2, 2, 4)).astype(np.float32)
    np.testing.assert_array_equal(copy.predict_on_batch(x), model.predict_on_batch(x))
