"""training.TransposedDense: Dense's function and gradients with the kernel stored transposed, only while training;
the model comes back (and is saved) with plain Dense layers, bit for bit; a checkpoint holding it loads safely."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from vggbn.numerics import models, training
from vggbn.numerics.feature_training import _restore_rng_states, _rng_states


def chain(bias=True):
    init = keras.initializers.GlorotUniform(seed=3)
    inputs = keras.Input((2, 2, 3), name="features")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(40, activation="relu", kernel_initializer=init, bias_initializer="random_normal",
                           use_bias=bias, name="fc1")(x)
    x = keras.layers.BatchNormalization(name="fc1_bn")(x)
    x = keras.layers.Dropout(0.5, seed=1, name="fc1_dropout")(x)
    outputs = keras.layers.Dense(5, activation="softmax", kernel_initializer=init, name="predictions")(x)
    return keras.Model(inputs, outputs, name="dense")


def batch(rows=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 2, 2, 3)).astype("float32"), (np.arange(rows) % 5).astype("int32")


def test_each_plain_dense_is_replaced_with_the_same_name_and_transposed_weights():
    model = chain()
    converted = training.for_training(model)
    assert [type(layer).__name__ for layer in converted.layers] == [
        "InputLayer", "Flatten", "TransposedDense", "BatchNormalization", "Dropout", "TransposedDense"]
    assert [layer.name for layer in converted.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(converted.get_layer("fc1").kernel_t, model.get_layer("fc1").kernel.numpy().T)


@pytest.mark.parametrize("chunk_bytes", [training.CHUNK_BYTES, 400])  # fc1's kernel whole, and in 5 pieces
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 16, 64])
def test_forward_and_gradients_equal_dense_within_float_rounding(bias, rows, chunk_bytes, monkeypatch):
    monkeypatch.setattr(training, "CHUNK_BYTES", chunk_bytes)
    model = chain(bias)
    converted = training.for_training(model)
    assert converted.get_layer("fc1").chunks == (5 if chunk_bytes == 400 else 1)
    x, y = batch(rows)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    def gradients_by_layer(m):
        x_in = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x_in)
            out = m(x_in, training=False)
            loss = loss_fn(y, out)
        dx, *grads = tape.gradient(loss, [x_in, *m.trainable_variables])
        by_layer = {}
        for variable, grad in zip(m.trainable_variables, grads, strict=True):
            layer, name = variable.path.split("/")
            if name.startswith("kernel_t"):
                by_layer.setdefault((layer, "kernel"), []).append(grad.numpy())
            else:
                by_layer[layer, name] = grad.numpy()
        return out, dx, {key: np.concatenate(value).T if isinstance(value, list) else value
                         for key, value in by_layer.items()}

    (out_a, dx_a, grads_a), (out_b, dx_b, grads_b) = gradients_by_layer(model), gradients_by_layer(converted)
    np.testing.assert_allclose(out_b, out_a, rtol=1e-5, atol=1e-7)
    assert grads_b.keys() == grads_a.keys()
    for key in grads_a:
        np.testing.assert_allclose(grads_b[key], grads_a[key], rtol=1e-5, atol=1e-6, err_msg=str(key))
    np.testing.assert_allclose(dx_b, dx_a, rtol=1e-5, atol=1e-7)  # the input's gradient too


@pytest.mark.parametrize("chunk_bytes", [training.CHUNK_BYTES, 400])
def test_back_to_plain_dense_bit_for_bit_and_saved_as_standard_keras(tmp_path, chunk_bytes, monkeypatch):
    monkeypatch.setattr(training, "CHUNK_BYTES", chunk_bytes)
    model = chain()
    back = training.for_saving(training.for_training(model))
    assert [type(layer) for layer in back.layers] == [type(layer) for layer in model.layers]
    assert back.get_config() == model.get_config()
    for a, b in zip(model.get_weights(), back.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    models.save_model(back, tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as file:
        config = json.loads(file.read("config.json"))
    assert {layer["class_name"] for layer in config["config"]["layers"]} <= {
        "InputLayer", "Flatten", "Dense", "BatchNormalization", "Dropout"}
    assert "vggbn" not in json.dumps(config)


def test_a_trainer_returns_plain_dense_after_training():
    model = training.for_training(chain())
    training.compile_for_training(model, 1e-3)
    trainer = training.Trainer(model, tf.distribute.get_strategy())
    trainer.train_batch(*batch())
    finished = trainer.finish()
    assert not any(isinstance(layer, training.TransposedDense) for layer in finished.layers)
    np.testing.assert_array_equal(finished.get_layer("fc1").kernel.numpy(), np.asarray(model.get_layer("fc1").kernel_t).T)


def test_a_checkpoint_holding_it_loads_with_safe_mode_and_trains_on_identically(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "CHUNK_BYTES", 400)  # fc1 in 5 pieces
    training.seed_everything(0)
    model = training.for_training(chain())
    training.compile_for_training(model, 1e-3)
    trainer = training.Trainer(model, tf.distribute.get_strategy())
    x, y = batch()
    trainer.train_batch(x, y)
    model.save(tmp_path / "checkpoint.keras")
    loaded = keras.saving.load_model(tmp_path / "checkpoint.keras", safe_mode=True)
    assert isinstance(loaded.get_layer("fc1"), training.TransposedDense)
    _restore_rng_states(loaded, _rng_states(model))  # Dropout's RNG, which .keras files do not keep (finetune's way)
    resumed = training.Trainer(loaded, tf.distribute.get_strategy())
    for _ in range(2):
        assert trainer.train_batch(x, y) == resumed.train_batch(x, y)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_models_that_are_no_chain_or_have_no_plain_dense_are_left_as_they_are():
    inputs = keras.Input((4,))
    left, right = keras.layers.Dense(3, name="a")(inputs), keras.layers.Dense(3, name="b")(inputs)
    branched = keras.Model(inputs, keras.layers.Add()([left, right]))
    assert training.for_training(branched) is branched
    regularized = keras.Model(inputs, keras.layers.Dense(3, kernel_regularizer="l2")(inputs))
    assert training.for_training(regularized) is regularized


def test_kernels_are_in_pieces_on_a_cpu_at_small_batches_only():
    """8 MiB pieces keep each piece's Adam update in a CPU's cache where a step is bound by memory; on a GPU, or at a
    batch where the matmuls bind, they would only split one matmul and one Adam launch into many (VGG16's fc1: 64
    pieces on a CPU at batch 16, one at batch 256 or on a GPU)."""
    assert training.chunks(25088, 4096) == 64 and training.chunks(4096, 4096) == 8
    assert training.chunks(25088, 4096, batch_size=training.PIECES_UP_TO_BATCH) == 64
    assert training.chunks(25088, 4096, batch_size=16) == 64
    assert training.chunks(25088, 4096, batch_size=256) == training.chunks(4096, 4096, batch_size=33) == 1
    assert training.chunks(25088, 4096, gpu=True) == training.chunks(4096, 4096, gpu=True) == 1
    assert training.chunks(12, 40) == 1  # small kernels are whole everywhere
    model = training.for_training(keras.Sequential([keras.Input((4096,)), keras.layers.Dense(4096)]), batch_size=256)
    assert [layer.chunks for layer in model.layers[1:]] == [1]
    model = training.for_training(keras.Sequential([keras.Input((4096,)), keras.layers.Dense(4096)]), batch_size=16)
    assert [layer.chunks for layer in model.layers[1:]] == [8]
