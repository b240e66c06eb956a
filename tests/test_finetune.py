"""Fine-tuning on cached features: a checkpoint is resumed only when it passes its check, and a diverged run stops
at the epoch where it diverged (or, for a learning-rate sweep, is recorded)."""

import json
import logging

import keras
import numpy as np
import pytest

from vggbn.storage import features
from vggbn.numerics.feature_training import Checkpoints, TrainingDiverged, TrainingPlan, train_on_features

RECIPE = {"run": "test"}


@pytest.fixture
def feature_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = {}
    for split, rows in (("train", 40), ("valid", 12)):
        labels = rng.integers(0, 3, rows)
        values = rng.normal(size=(rows, 2, 2, 3)).astype(np.float32) + labels[:, None, None, None]

        def extract(wanted, values=values):
            yield values[list(wanted)]

        paths[split] = tmp_path / f"{split}.h5"
        features.build_feature_file(paths[split],
                                    features.FeatureRows([f"{split}/{i}.png" for i in range(rows)], labels.tolist(),
                                                         [str(i) for i in range(rows)]),
                                    features.FeatureRecipe({}, (2, 2, 3), "float32", chunk_rows=8), extract,
                                    tmp_path / "work" / split)
    return paths


def dense_part():
    init = keras.initializers.GlorotUniform(seed=3)
    inputs = keras.Input((2, 2, 3))
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(8, activation="relu", kernel_initializer=init, name="fc1")(x)
    x = keras.layers.Dropout(0.5, seed=1, name="fc1_dropout")(x)
    outputs = keras.layers.Dense(3, activation="softmax", kernel_initializer=init, name="predictions")(x)
    return keras.Model(inputs, outputs, name="dense")


def train(files, epochs, work_dir, lr=0.01, **options):
    return train_on_features(dense_part(), TrainingPlan(epochs=epochs, batch_size=8, lr=lr, dropout=0.5, seed=0,
                             shuffle_buffer=16), train_path=files["train"], valid_path=files["valid"],
                             checkpoints=Checkpoints(work_dir, RECIPE) if work_dir else None, **options)


def assert_same_weights(a, b):
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture
def reference(feature_files, tmp_path):
    return train(feature_files, 3, tmp_path / "reference")


def test_an_intact_checkpoint_resumes_to_the_uninterrupted_result(feature_files, reference, tmp_path):
    work = tmp_path / "work"
    train(feature_files, 2, work)  # as if killed after its second epoch
    resumed = train(feature_files, 3, work)
    assert resumed.epochs_recomputed_corrupt == 0 and len(resumed.history) == 3
    assert_same_weights(resumed.model, reference.model)
    assert resumed.history == reference.history


@pytest.mark.parametrize("damage", ["checkpoint", "record"])
def test_a_damaged_checkpoint_is_dropped_and_training_starts_over(feature_files, reference, tmp_path, caplog,
                                                                   damage):
    work = tmp_path / "work"
    train(feature_files, 2, work)
    if damage == "checkpoint":
        checkpoint = next(work.glob("checkpoint-*.keras"))
        data = bytearray(checkpoint.read_bytes())
        data[len(data) // 2] ^= 0x01
        checkpoint.write_bytes(bytes(data))
    else:  # a plausible-looking record that was altered: another dropout RNG state
        record = json.loads((work / "epoch.json").read_text())
        record["rng"]["fc1_dropout"][0][0] += 1
        (work / "epoch.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        resumed = train(feature_files, 3, work)
    assert resumed.epochs_recomputed_corrupt == 2
    assert_same_weights(resumed.model, reference.model)
    assert resumed.history == reference.history
    assert any("epoch.json" in r.getMessage() and "fails its check" in r.getMessage() for r in caplog.records)


def broken_dense_part():
    """A dense part whose file holds a NaN weight (the classifier's bias: every output depends on it, while ReLU may
    turn a NaN hidden unit into 0): the loss is NaN from the first batch."""
    model = dense_part()
    kernel, bias = model.get_layer("predictions").get_weights()
    bias[0] = np.nan
    model.get_layer("predictions").set_weights([kernel, bias])
    return model


def test_a_diverging_run_stops_naming_the_epoch_before_checkpointing_it(feature_files, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(TrainingDiverged, match=r"^epoch 1, batch 1: training diverged \(loss nan\); a lower "
                                               r"learning rate than 0\.01 may hold$"):
        train_on_features(broken_dense_part(), TrainingPlan(epochs=2, batch_size=8, lr=0.01, dropout=0.5, seed=0,
                          shuffle_buffer=16), train_path=feature_files["train"], valid_path=feature_files["valid"],
                          checkpoints=Checkpoints(work, RECIPE))
    assert not list(work.glob("checkpoint-*")) and not (work / "epoch.json").exists()


def test_a_learning_rate_sweep_records_a_diverged_run(feature_files):
    trained = train_on_features(broken_dense_part(), TrainingPlan(epochs=2, batch_size=8, lr=0.01, dropout=None, seed=0,
                                shuffle_buffer=16, diverged="record"), train_path=feature_files["train"],
                                valid_path=feature_files["valid"])
    assert len(trained.history) == 2 and np.isnan(trained.history[-1]["loss"])


def test_float16_features_train_exactly_as_their_float32_copy(feature_files, tmp_path):
    """The feed hands a float16 file's rows to the step as float16 (half the bytes to its device) and the step
    casts them to float32 there: exact, so training equals training on a float32 file of the same values."""
    import h5py

    halves = {}
    for split, path in feature_files.items():
        with h5py.File(path) as f:
            values, labels = f["features"][:].astype(np.float16), f["labels"][:]
        for dtype in ("float16", "float32"):
            halves[dtype, split] = tmp_path / f"{split}-{dtype}.h5"
            features.build_feature_file(halves[dtype, split],
                                        features.FeatureRows([f"{split}/{i}.png" for i in range(len(labels))],
                                                             labels.tolist(), [str(i) for i in range(len(labels))]),
                                        features.FeatureRecipe({}, (2, 2, 3), dtype, chunk_rows=8),
                                        lambda wanted, values=values: iter([values[list(wanted)]]),
                                        tmp_path / "w" / dtype / split)
    trained = {dtype: train({split: halves[dtype, split] for split in ("train", "valid")}, 2, None)
               for dtype in ("float16", "float32")}
    assert trained["float16"].history == trained["float32"].history
    assert_same_weights(trained["float16"].model, trained["float32"].model)


def test_float16_compute_trains_with_loss_scaling_and_resumes(feature_files, tmp_path):
    """`compute: float16` (Keras mixed_float16) trains on the CPU: the optimizer scales the loss (dynamically), the
    last epoch's loss is float32 training's within 5%, a checkpoint (with the loss scale) resumes to the
    uninterrupted result, and the model comes back computing in float32."""
    def half(epochs, work, compute="float16"):
        return train_on_features(dense_part(), TrainingPlan(epochs=epochs, batch_size=8, lr=0.01, dropout=0.5, seed=0,
                                 shuffle_buffer=16, compute=compute), train_path=feature_files["train"],
                                 valid_path=feature_files["valid"],
                                 checkpoints=Checkpoints(work, RECIPE) if work else None)

    full = half(3, tmp_path / "full")
    single = half(3, None, compute="float32")
    losses = [epoch["loss"] for epoch in full.history]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    # dynamic loss scaling starts high (2^15) and skips the steps whose float16 gradients overflow while it comes
    # down, so the first epoch differs; by the last, the two have trained alike
    assert abs(losses[-1] - single.history[-1]["loss"]) < 0.05 * single.history[-1]["loss"]
    assert {layer.dtype_policy.name for layer in full.model.layers[1:]} == {"float32"}
    checkpoint = keras.saving.load_model(next((tmp_path / "full").glob("*.keras")), safe_mode=True)
    assert type(checkpoint.optimizer).__name__ == "LossScaleOptimizer"  # the loss scale is part of the state
    half(2, tmp_path / "resumed")  # as if killed after its second epoch
    resumed = half(3, tmp_path / "resumed")
    assert resumed.history == full.history and len(resumed.history) == 3
    assert_same_weights(resumed.model, full.model)


def test_calibrated_bn_stays_the_identity_in_float16():
    """BN inserted by the API, run in mixed_float16 (what finetune trains in with `compute: float16`), gives the
    original model's float16 outputs: the calibration holds at float16's precision."""
    import vggbn
    from vggbn.numerics import models

    model = dense_part()
    x = np.random.default_rng(1).normal(2.0, 2.0, size=(64, 2, 2, 3)).astype(np.float32)
    inserted = vggbn.insert_calibrated_bn(model, x)
    before = models.with_compute_dtype(model, "float16").predict(x, verbose=0)
    after = models.with_compute_dtype(inserted.model, "float16")
    assert {layer.dtype_policy.name for layer in after.layers[1:-1]} == {"mixed_float16"}
    np.testing.assert_allclose(after.predict(x, verbose=0), before, atol=5e-3)
    np.testing.assert_allclose(after.predict(x, verbose=0), model.predict(x, verbose=0), atol=5e-3)
