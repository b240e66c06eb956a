"""The training loop (`training.Trainer`): one replica and two replicas (MirroredStrategy over two logical CPU
devices, in a fresh process), and two workers, take the same steps, BatchNormalization and Dropout included."""

import json
import os
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
    assert_same_training(one, two)
    assert two["synchronized"] == [False]  # the saved model is the same whatever trained it


UNEVEN = """
import json, sys
from vggbn.cluster import distribute
distribute.strategy()  # before TensorFlow runs anything
import numpy as np, keras
from vggbn.numerics.training import Trainer, compile_for_training, seed_everything

index, workers = distribute.worker()
seed_everything(0)
with distribute.strategy().scope():
    init = keras.initializers.GlorotUniform(seed=3)
    inputs = keras.Input((6,))
    x = keras.layers.BatchNormalization()(keras.layers.Dense(8, activation="relu", kernel_initializer=init)(inputs))
    x = keras.layers.Dropout(0.5, seed=1)(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", kernel_initializer=init)(x))
    compile_for_training(model, 1e-2)
    trainer = Trainer(model, distribute.strategy(), (index, workers))
rng = np.random.default_rng(0)
steps = []
for count in (8, 7, 8, 7, 1, 8, 3):  # 2 workers: 4+4, then 4+3 (worker 0's 4 rows match the trace of 8), 1+0
    x, y = rng.normal(size=(count, 6)).astype("float32"), rng.integers(0, 3, count).astype("int32")
    mine = distribute.split(count, workers)[index]
    steps.append(trainer.train_batch(x[mine], y[mine], count))
    steps.append(trainer.evaluate_batch(x[mine], y[mine], count))
if distribute.is_chief():
    with open(sys.argv[1], "w") as file:
        json.dump({"steps": steps, "weights": [w.tolist() for w in trainer.finish().get_weights()]}, file)
"""


def test_two_workers_with_uneven_shares_take_the_steps_one_process_takes(tmp_path, monkeypatch):
    """Global batches whose rows do not split evenly between two workers (8, 7, 1 rows): worker 0's share of 7
    matches the shape the step was traced for, worker 1's does not. Each collective keeps the instance key it was
    traced with, so a worker tracing alone would pair its collectives with the wrong ones: the step must see the
    same shapes on every worker. Ends within the watchdog's 30 s if it does not."""
    from vggbn.runner import launch

    for key in [key for key in os.environ if key.startswith(("TF_CONFIG", "VGGBN_", "SLURM_"))]:
        monkeypatch.delenv(key)
    for key, value in {"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "VGGBN_COLLECTIVE_TIMEOUT": "30"}.items():
        monkeypatch.setenv(key, value)
    one = subprocess.run([sys.executable, "-c", UNEVEN, str(tmp_path / "one.json")], capture_output=True, text=True,
                         cwd=ROOT, timeout=300, env={**os.environ, "VGGBN_STRATEGY": "none"})
    assert one.returncode == 0, one.stderr[-3000:]
    monkeypatch.setenv("VGGBN_STRATEGY", "multi_worker")
    assert launch.start_local_workers([sys.executable, "-c", UNEVEN, str(tmp_path / "two.json")], 2) == 0
    assert_same_training(*(json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two")))


def assert_same_training(one: dict, two: dict) -> None:
    """Two trainings' step results (loss sum, correct) and final weights agree, up to the order of float sums."""
    import numpy as np

    for (loss_a, correct_a), (loss_b, correct_b) in zip(one["steps"], two["steps"], strict=True):
        assert abs(loss_a - loss_b) <= 1e-5 * max(1.0, abs(loss_a)) and correct_a == correct_b
    for a, b in zip(one["weights"], two["weights"], strict=True):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=0, atol=1e-6)


def test_epoch_logs_reach_dvclive_under_its_keras_callbacks_names(tmp_path, monkeypatch):
    """`live_logger` replays the epochs already done and `log_epoch` adds one: dvclive's Keras callback's names
    (`train/loss`, `eval/accuracy`, ...), one row a step, as dvc.yaml's plots read them."""
    import csv

    from vggbn.numerics.training import live_logger, log_epoch

    monkeypatch.chdir(tmp_path)  # outside any git or DVC repository: dvclive looks for none
    epochs = [{"loss": 1.5, "accuracy": 0.25, "val_loss": 1.75, "val_accuracy": 0.5},
              {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.25, "val_accuracy": 0.75}]
    live = live_logger(tmp_path / "live", epochs[:1])
    log_epoch(live, epochs[1])
    live.end()
    folder = tmp_path / "live" / "plots" / "metrics"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.tsv")) == [
        "eval/accuracy.tsv", "eval/loss.tsv", "train/accuracy.tsv", "train/loss.tsv"]
    with open(folder / "eval" / "loss.tsv") as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    assert [(row["step"], float(row["loss"])) for row in rows] == [("0", 1.75), ("1", 1.25)]
