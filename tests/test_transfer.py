"""The transfer grid: head-only training on rows cached once equals training the whole model with its frozen part in
inference, and a grid's memory does not grow with its number of trainings."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def write_features(path, rows, rng, *, classes=3, row_shape=(2, 2, 4), chunk_rows=8):
    from vggbn.storage import features

    x = np.maximum(rng.normal(size=(rows, *row_shape)), 0).astype(np.float32)
    y = rng.integers(0, classes, rows)
    features.build_feature_file(path,
                                features.FeatureRows([f"{i}.png" for i in range(rows)], y.tolist(), ["0" * 32] * rows),
                                features.FeatureRecipe({"test": 1}, row_shape, "float32", chunk_rows=chunk_rows),
                                lambda todo: iter([x[todo]]), path.with_suffix(".work"))


def start_model(row_shape=(2, 2, 4), dropout=0.5):
    """A dense part as the pipeline's starts look: flatten, fc1 with calibrated BN (non-trivial moving statistics)
    and Dropout, fc2 with Dropout, a 5-class classifier."""
    import keras

    init = keras.initializers.GlorotUniform(seed=3)
    inputs = keras.Input(row_shape, name="block2_pool_features")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(16, activation="relu", name="fc1", kernel_initializer=init)(x)
    bn = keras.layers.BatchNormalization(name="fc1_bn")
    x = bn(x)
    x = keras.layers.Dropout(dropout, seed=1, name="fc1_dropout")(x)
    x = keras.layers.Dense(16, activation="relu", name="fc2", kernel_initializer=init)(x)
    x = keras.layers.Dropout(dropout, seed=2, name="fc2_dropout")(x)
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="predictions")(x), name="start")
    rng = np.random.default_rng(5)
    bn.set_weights([rng.uniform(0.5, 2, 16), rng.normal(size=16), rng.uniform(0, 1, 16), rng.uniform(0.5, 2, 16)])
    return model


@pytest.fixture
def feature_files(tmp_path, rng):
    write_features(tmp_path / "train.h5", 44, rng)  # chunks of 8 rows: shuffled in blocks, a last partial batch
    write_features(tmp_path / "valid.h5", 21, rng)
    return tmp_path / "train.h5", tmp_path / "valid.h5"


def test_head_mode_freezes_everything_before_the_head_with_inner_dropout_off():
    from vggbn.numerics.new_task import new_task_model

    head = new_task_model(start_model(), 3, train_mode="head", seed=0)
    layers = {layer.name: layer for layer in head.layers}
    assert layers["fc1_dropout"].rate == 0  # inside the frozen part: as in inference
    assert layers["fc2_dropout"].rate == 0.5  # right before the head: drops on the frozen part's output
    assert [layer.name for layer in head.layers if layer.trainable_weights] == ["predictions"]
    assert head.output_shape == (None, 3)
    dense = new_task_model(start_model(), 3, train_mode="dense", seed=0)
    assert {layer.name: layer.rate for layer in dense.layers if hasattr(layer, "rate")} == {
        "fc1_dropout": 0.5, "fc2_dropout": 0.5}


@pytest.mark.parametrize("dropout", [0.5, 0.0])
def test_head_mode_on_cached_rows_equals_training_the_whole_model(tmp_path, feature_files, dropout):
    """compare_transfer's head mode (the frozen part's output cached once, the head trained on it) against the
    whole model trained with the same semantics, seeded: the same valid accuracy and loss."""
    from vggbn.numerics.feature_training import evaluate, TrainingPlan, train_on_features
    from vggbn.numerics.new_task import new_task_model
    from vggbn.numerics.transfer import TransferGrid, compare_transfer

    train, valid = feature_files
    start = start_model(dropout=dropout)
    report = compare_transfer({"start": start}, TransferGrid("head", [0.03], [1], 3, 8), train_path=train,
                              valid_path=valid, num_classes=3, work_dir=tmp_path / "work")
    whole = train_on_features(new_task_model(start, 3, train_mode="head", seed=1), TrainingPlan(epochs=3, batch_size=8,
                              lr=0.03, dropout=None, seed=1, shuffle_buffer=4096, diverged="record"), train_path=train,
                              valid_path=valid, show_progress=False).model
    expected = evaluate(whole, valid, 8)
    result = report["start"]["per_lr"]["0.03"]
    assert result["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-5)
    assert result["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert not (tmp_path / "work" / "frozen" / "start").exists()  # the cached rows are gone with the start's runs


def test_the_dropout_before_the_head_acts_on_the_cached_rows(tmp_path, feature_files):
    from vggbn.numerics.transfer import TransferGrid, compare_transfer

    train, valid = feature_files
    losses = [compare_transfer({"start": start_model(dropout=rate)}, TransferGrid("head", [0.03], [1], 3, 8),
                               train_path=train, valid_path=valid, num_classes=3, work_dir=tmp_path / "work")["start"]["per_lr"]["0.03"]["loss"] for rate in (0.5, 0.0)]
    assert abs(losses[0] - losses[1]) > 1e-4


def test_bad_train_mode_and_a_start_without_classifier_are_one_line_errors(tmp_path, feature_files):
    import keras

    from vggbn.numerics.transfer import TransferGrid, compare_transfer

    train, valid = feature_files
    with pytest.raises(ValueError, match=r"^Expected `train_mode` to be one of head, dense\. Received: "
                                         r"train_mode=all$"):
        compare_transfer({"start": start_model()}, TransferGrid("all", [0.01], [0], 1, 8), train_path=train,
                         valid_path=valid, num_classes=3)
    inputs = keras.Input((2, 2, 4))
    no_dense = keras.Model(inputs, keras.layers.Flatten()(inputs), name="flat")
    with pytest.raises(ValueError, match=r"^the start model 'flat' has no Dense layer"):
        compare_transfer({"start": no_dense}, TransferGrid("head", [0.01], [0], 1, 8), train_path=train,
                         valid_path=valid, num_classes=3)


GRID_CHILD = textwrap.dedent("""
    import sys, warnings
    warnings.filterwarnings("ignore")
    import keras
    from vggbn.numerics import transfer

    def rss_mb():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

    def evaluate(*args, **kwargs):  # after each training, its model still alive: one model's worth
        result = score(*args, **kwargs)
        print(f"rss {rss_mb():.1f}", flush=True)
        return result

    score, transfer.evaluate = transfer.evaluate, evaluate
    width, lrs, seeds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    inputs = keras.Input((2, 2, 4))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(width, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(width, activation="relu", name="fc2")(x)
    start = keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="predictions")(x))
    grid = transfer.TransferGrid("dense", [1e-3 * 10 ** i for i in range(lrs)], list(range(seeds)), 1, 16)
    transfer.compare_transfer({"start": start}, grid, train_path=sys.argv[4], valid_path=sys.argv[5], num_classes=3)
""")


def rss_after_each_training(*args) -> list[float]:
    """RSS (MB) of the grid child with `args` after each of its trainings."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", GRID_CHILD, *map(str, args)], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return [float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("rss ")]


def test_grid_memory_does_not_grow_with_its_trainings(feature_files):
    """Six trainings in a row (3 learning rates x 2 seeds) of a dense part with 4096-wide layers (16.8M parameters:
    64 MB, with Adam's two slots 193 MB a training; TensorFlow used to keep each one, ~280 MB a training): after
    the second (the first leaves TensorFlow's one-time caches: about 65 MB here), the resident memory may not grow by
    a quarter of one training's model and optimizer."""
    train, valid = feature_files
    width = 4096
    run_mb = 3 * 4 * (16 * width + width * width + 2 * width + 5 * width) / 2 ** 20
    rss = rss_after_each_training(width, 3, 2, train, valid)
    assert len(rss) == 6
    assert max(rss[2:]) - rss[1] < run_mb / 4, f"RSS after each training: {rss} MB (one training: {run_mb:.0f} MB)"


def test_a_grid_leaves_no_feature_stream_behind(feature_files):
    """Each training's feature streams (tf.data generators over open HDF5 files, with their shuffle buffers: ~28 MB
    a training at VGG16's rows) are gone once the grid is over, in both modes."""
    import gc

    import h5py
    from tensorflow.python.data.ops import dataset_ops

    from vggbn import compat
    from vggbn.numerics.transfer import TransferGrid, compare_transfer

    def alive():
        gc.collect()
        objects = gc.get_objects()
        return (len(compat.global_py_funcs()),  # raises where TensorFlow keeps them elsewhere: never a vacuous 0
                sum(isinstance(o, dataset_ops.DatasetV2._GeneratorState) for o in objects),
                sum(isinstance(o, h5py.File) and bool(o.id.valid) for o in objects))

    train, valid = feature_files
    before = alive()
    for mode in ("dense", "head"):
        compare_transfer({"start": start_model()}, TransferGrid(mode, [0.01, 0.1], [0, 1], 2, 8), train_path=train,
                         valid_path=valid, num_classes=3)
        assert alive() == before, mode


def test_head_mode_runs_on_a_dense_part_split_off_a_whole_model(tmp_path, rng, mini_vgg):
    """`models.split`'s dense part shares its layers with the whole classifier (the pipeline's without-BN start):
    the frozen part is rebuilt on an input of its own, and head mode on its cached rows trains what the whole
    model with the frozen part in inference trains."""
    from vggbn.numerics import models
    from vggbn.numerics.feature_training import TrainingPlan, evaluate, train_on_features
    from vggbn.numerics.new_task import new_task_model
    from vggbn.numerics.transfer import TransferGrid, compare_transfer

    _, dense = models.split(mini_vgg)
    row_shape = tuple(dense.input_shape[1:])
    train, valid = tmp_path / "train.h5", tmp_path / "valid.h5"
    write_features(train, 16, rng, row_shape=row_shape)
    write_features(valid, 8, rng, row_shape=row_shape)
    report = compare_transfer({"without_bn": dense}, TransferGrid("head", [0.01], [0], 2, 8), train_path=train,
                              valid_path=valid, num_classes=3, work_dir=tmp_path / "work")
    plan = TrainingPlan(epochs=2, batch_size=8, lr=0.01, dropout=None, seed=0, shuffle_buffer=4096, diverged="record")
    whole = train_on_features(new_task_model(dense, 3, train_mode="head", seed=0), plan, train_path=train,
                              valid_path=valid, show_progress=False).model
    expected, result = evaluate(whole, valid, 8), report["without_bn"]["per_lr"]["0.01"]
    assert result["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-5)
    assert result["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert report["without_bn"]["best_accuracy"] == result["accuracy"]
