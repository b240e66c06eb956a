"""The training loop (`training.Trainer`): one replica and two replicas (MirroredStrategy over two logical CPU
devices, in a fresh process) take the same steps, BatchNormalization and Dropout included."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
import numpy as np, tensorflow as tf, keras
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)
from vggbn.numerics.training import Trainer, compile_for_training, seed_everything

def build():
    init = keras.initializers.GlorotUniform(seed=3)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", kernel_initializer=init)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.5, seed=1)(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", kernel_initializer=init)(x))

rng = np.random.default_rng(0)
x, y = rng.normal(size=(11, 6)).astype("float32"), rng.integers(0, 3, 11).astype("int32")  # 11: uneven slices
result = {}
for name, strategy in (("one", tf.distribute.get_strategy()), ("two", tf.distribute.MirroredStrategy())):
    seed_everything(0)
    with strategy.scope():
        model = build()
        compile_for_training(model, 1e-2)
        trainer = Trainer(model, strategy)
    steps = [trainer.train_batch(x, y) for _ in range(3)]
    model = trainer.finish()
    result[name] = {"steps": steps, "weights": [w.tolist() for w in model.get_weights()],
                    "synchronized": [l.synchronized for l in model.layers if hasattr(l, "synchronized")],
                    "replicas": trainer.replicas}
json.dump(result, sys.stdout)
"""


def test_two_replicas_take_the_steps_one_process_takes(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    one, two = result["one"], result["two"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    for (loss_a, correct_a), (loss_b, correct_b) in zip(one["steps"], two["steps"], strict=True):
        assert abs(loss_a - loss_b) <= 1e-5 * max(1.0, abs(loss_a)) and correct_a == correct_b
    import numpy as np

    for a, b in zip(one["weights"], two["weights"], strict=True):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=0, atol=1e-6)
    assert two["synchronized"] == [False]  # the saved model is the same whatever trained it
