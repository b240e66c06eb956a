"""optimizers.FusedAdam: Keras' Adam numerically, deterministic, saved and loaded with its slots, and under
MirroredStrategy."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from vggbn.numerics import optimizers, training

LR = 1e-3
STEPS = 4


def tiny_model(seed=0, dropout=True):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu", name="fc1"),
                             keras.layers.BatchNormalization(name="fc1_bn"),
                             *([keras.layers.Dropout(0.5, seed=1)] if dropout else []),
                             keras.layers.Dense(5, name="predictions")])


def data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(32, 12)).astype("float32"), (np.arange(32) % 5).astype("int64")


def train(model, optimizer, steps=STEPS):
    """`steps` steps of a plain tf.function step (forward, loss, tape, optimizer.apply) on one batch."""
    x, y = data()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    for _ in range(steps):
        step(x, y)
    return [v.numpy() for v in model.trainable_variables], [v.numpy() for v in optimizer.variables]


def f32(value):
    return float(np.float32(value))


@pytest.fixture(autouse=True)
def deterministic():
    training.seed_everything(0)


def test_bit_identical_to_keras_adam_with_float32_betas():
    """The kernel forms 1 - beta in float32: exactly Keras' Adam with the betas rounded to float32 first."""
    schedule = keras.optimizers.schedules.ExponentialDecay(LR, decay_steps=2, decay_rate=0.5)
    fused = train(tiny_model(), optimizers.FusedAdam(learning_rate=schedule, beta_1=0.8, beta_2=0.99))
    reference = train(tiny_model(), keras.optimizers.Adam(learning_rate=schedule, beta_1=f32(0.8), beta_2=f32(0.99)))
    for got, want in zip(fused[0] + fused[1], reference[0] + reference[1]):
        np.testing.assert_array_equal(got, want)


def test_close_to_keras_default_adam():
    """Against Keras' Adam with its default betas: the weights agree to 1e-6 relative, the steps themselves to
    1e-5 of their size (1 - float32(0.999) is 1.3e-5 off 0.001 in the velocity's decay)."""
    before = [v.numpy() for v in tiny_model().trainable_variables]
    (fused, fused_slots) = train(tiny_model(), optimizers.FusedAdam(learning_rate=LR))
    (reference, reference_slots) = train(tiny_model(), keras.optimizers.Adam(learning_rate=LR))
    for start, got, want in zip(before, fused, reference):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5 * LR * STEPS)
        assert np.abs(got - start).max() > 0.5 * LR  # it did train
    for got, want in zip(fused_slots, reference_slots):
        np.testing.assert_allclose(got, want, rtol=3e-5, atol=1e-12)


def test_deterministic_run_to_run():
    first = train(tiny_model(), optimizers.FusedAdam(learning_rate=LR))
    second = train(tiny_model(), optimizers.FusedAdam(learning_rate=LR))
    for got, want in zip(first[0] + first[1], second[0] + second[1]):
        assert got.tobytes() == want.tobytes()


def test_drop_in_for_compile_and_fit():
    model = tiny_model()
    model.compile(optimizer=optimizers.FusedAdam(learning_rate=LR),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data()
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()
    assert int(model.optimizer.iterations) == 8
    config = {key: value for key, value in optimizers.FusedAdam(learning_rate=LR).get_config().items() if key != "name"}
    assert config == {key: value for key, value in keras.optimizers.Adam(learning_rate=LR).get_config().items()
                      if key != "name"}


def test_keras_checkpoint_resumes_bit_identically(tmp_path):
    """Saved with its slots in a .keras file, loaded with safe_mode, it continues as an uninterrupted run."""
    x, y = data()

    def compiled():
        # No Dropout: its masks' RNG state is not in a .keras file (finetune checkpoints it beside the model).
        model = tiny_model(dropout=False)
        model.compile(optimizer=optimizers.FusedAdam(learning_rate=LR),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    def fit(model):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)

    training.seed_everything(0)
    uninterrupted = compiled()
    fit(uninterrupted)
    fit(uninterrupted)

    training.seed_everything(0)
    interrupted = compiled()
    fit(interrupted)
    path = tmp_path / "model.keras"
    interrupted.save(path)
    del interrupted
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.optimizer) is optimizers.FusedAdam
    assert int(loaded.optimizer.iterations) == 4
    assert len(loaded.optimizer.variables) == len(uninterrupted.optimizer.variables)
    fit(loaded)
    for got, want in zip(loaded.weights + loaded.optimizer.variables,
                         uninterrupted.weights + uninterrupted.optimizer.variables):
        assert got.numpy().tobytes() == want.numpy().tobytes(), got.path


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from vggbn.numerics import optimizers, training

    training.seed_everything(0)
    x = np.random.default_rng(1).normal(size=(8, 6)).astype("float32")
    y = (np.arange(8) % 3).astype("int64")

    def run(strategy, make_optimizer):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu"),
                                      keras.layers.Dense(3)])
            optimizer = make_optimizer()
            optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
        dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(8))
        batch = next(iter(dataset))

        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True)) / 8
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

        @tf.function
        def step(batch):
            strategy.run(replica_step, args=batch)

        for _ in range(3):
            step(batch)
        replicas = [[v.numpy() for v in strategy.experimental_local_results(w.value)] for w in model.trainable_variables]
        return replicas, int(optimizer.iterations.numpy())

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    fused, iterations = run(mirrored, lambda: optimizers.FusedAdam(learning_rate=0.01))
    keras_adam, _ = run(mirrored, lambda: keras.optimizers.Adam(learning_rate=0.01, beta_1=float(np.float32(0.9)),
                                                                 beta_2=float(np.float32(0.999))))
    single, _ = run(tf.distribute.get_strategy(), lambda: optimizers.FusedAdam(learning_rate=0.01))
    print(json.dumps({
        "replicas": [len(r) for r in fused],
        "iterations": iterations,
        "replicas_equal": all(np.array_equal(r[0], other) for r in fused for other in r[1:]),
        "equals_keras": all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(fused, keras_adam)),
        "max_diff_single": max(float(np.abs(a[0] - b[0]).max()) for a, b in zip(fused, single)),
    }))
""")


def test_mirrored_strategy_over_two_cpu_devices(tmp_path):
    """Variables made under MirroredStrategy (two logical CPUs), gradients applied inside strategy.run in a
    tf.function: every replica's copy is updated, the same on both, as Keras' Adam updates them."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == [2, 2, 2, 2]
    assert report["iterations"] == 3
    assert report["replicas_equal"]
    assert report["equals_keras"]
    assert report["max_diff_single"] < 1e-6
