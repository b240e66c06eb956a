"""What a run shows: TensorFlow's start-up chatter filtered (real errors kept), progress on a terminal and in a log,
VGGBN_LOG, and training that triggers no Keras warning."""

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from vggbn import console

ROOT = Path(__file__).resolve().parents[1]

# What TensorFlow 2.21 printed here at `import tensorflow` and at its first op (TF_CPP_MIN_LOG_LEVEL unset).
START_UP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796120755.613941    1092 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796120756.001503    1092 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available \
CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler \
flags.
2025-09-17 14:44:05.157831: I tensorflow/core/util/port.cc:153] oneDNN custom operations are on. You may see slightly \
different numerical results due to floating-point round-off errors from different computation orders.
E0000 00:00:1796120774.249180    1092 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to \
cuInit: UNKNOWN ERROR (303)
"""


def test_start_up_chatter_is_dropped_and_errors_are_kept():
    assert console.start_up_lines_kept(START_UP) == []
    error = "E0000 00:00:1796120774.249180    1092 dso_loader.cc:52] Could not load library libcudnn.so.9\n  from /opt"
    fatal = "2025-09-17 14:44:05.157831: F tensorflow/core/platform/cpu_feature_guard.cc:62] compiled to use AVX512F"
    text = START_UP + error + "\n" + fatal + "\nSegmentation fault\n"
    assert console.start_up_lines_kept(text) == [*error.splitlines(), fatal, "Segmentation fault"]


def test_native_writes_are_filtered_and_python_writes_pass(capfd):
    with console.native_stderr_filtered():
        os.write(2, START_UP.encode() + b"F0000 00:00:1.000000    1 check.cc:1] Check failed: shape\n")
        print("a Python warning stays", file=sys.stderr)
    assert capfd.readouterr().err == ("a Python warning stays\n"
                                      "F0000 00:00:1.000000    1 check.cc:1] Check failed: shape\n")


def python(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", console.LOG_VARIABLE)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**clean, "PYTHONPATH": str(ROOT), **env})


IMPORT_AND_RUN = ("from vggbn import console\nconsole.quiet_tensorflow_import()\nimport keras\n"
                  "import tensorflow as tf\nprint(float(tf.reduce_sum(tf.ones(3))))\n")


def test_tensorflow_starts_without_a_line_on_stderr():
    done = python(IMPORT_AND_RUN)
    assert (done.returncode, done.stdout, done.stderr) == (0, "3.0\n", "")


def test_debug_shows_tensorflows_own_start_up_lines():
    """The same run under VGGBN_LOG=debug: what the filter takes away (so the test above can fail)."""
    done = python(IMPORT_AND_RUN, VGGBN_LOG="debug")
    assert done.returncode == 0 and done.stdout == "3.0\n"
    assert "cuda drivers" in done.stderr or "absl::InitializeLog" in done.stderr, done.stderr


def test_a_failing_import_still_shows_its_error(tmp_path):
    """An error raised while TensorFlow imports reaches the terminal whole."""
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nos.write(2, b'W0000 00:00:1.0 1 a.cc:1] chatter\\n')\n"
                                      "raise ImportError('libtensorflow_framework.so.2: cannot open shared object')\n")
    done = python(f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nfrom vggbn import console\n"
                  "console.quiet_tensorflow_import()\nimport tensorflow\n")
    assert done.returncode == 1 and "chatter" not in done.stderr
    assert "ImportError: libtensorflow_framework.so.2: cannot open shared object" in done.stderr


@pytest.mark.parametrize("value, expected", [(None, logging.INFO), ("debug", logging.DEBUG), ("INFO", logging.INFO),
                                             ("warning", logging.WARNING)])
def test_log_level_from_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(console.LOG_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(console.LOG_VARIABLE, value)
    assert console.level() == expected


def test_a_bad_log_level_names_the_variable(monkeypatch):
    monkeypatch.setenv(console.LOG_VARIABLE, "loud")
    with pytest.raises(console.ConsoleError, match=r"VGGBN_LOG='loud': expected one of debug, info, warning"):
        console.level()


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(console.time, "monotonic", clock)
    monkeypatch.delenv(console.LOG_VARIABLE, raising=False)
    return clock


def progress_lines(caplog):
    return [record.getMessage() for record in caplog.records if record.name == "vggbn.progress"]


def test_away_from_a_terminal_a_long_loop_logs_each_tenth(clock, caplog):
    caplog.set_level(logging.INFO, logger="vggbn")
    with console.progress(1000, "features train.h5", "img") as bar:
        for _ in range(100):
            clock.now += 310.0  # ten images every 310 s: slow enough for a line at each tenth
            bar.update(10)
    lines = progress_lines(caplog)
    assert lines[0] == "features train.h5: 10% (100/1,000 img, 31 s/img, 7 h 45 min left)"
    assert [line.split(": ")[1].split("%")[0] for line in lines] == [str(p) for p in range(10, 100, 10)]


def test_a_loop_of_minutes_logs_nothing_and_lines_are_five_minutes_apart(clock, caplog):
    caplog.set_level(logging.INFO, logger="vggbn")
    with console.progress(100, "minutes", "img") as bar:
        for _ in range(100):
            clock.now += 2.5  # under 5 minutes in all
            bar.update()
    assert progress_lines(caplog) == []
    with console.progress(100, "steady", "img") as bar:
        for _ in range(100):
            clock.now += 10.0  # a tenth every 100 s: a line every third tenth, 300 s apart
            bar.update()
    with console.progress(1000, "slow tenths", "img") as bar:
        for _ in range(1000):
            clock.now += 3.1  # a tenth every 310 s: a line each tenth
            bar.update()
    lines = progress_lines(caplog)
    assert [line.split(" (")[0] for line in lines if line.startswith("steady")] == [
        "steady: 30%", "steady: 60%", "steady: 90%"]
    assert len([line for line in lines if line.startswith("slow tenths")]) == 9


def test_tracked_passes_items_through_unchanged(clock):
    items = [np.arange(3), np.arange(5)]
    assert [id(item) for item in console.tracked(items, 8, "rows", size=len)] == [id(item) for item in items]


def test_no_progress_under_warning(clock, caplog, monkeypatch):
    monkeypatch.setenv(console.LOG_VARIABLE, "warning")
    caplog.set_level(logging.INFO)
    with console.progress(10, "silent") as bar:
        for _ in range(10):
            clock.now += 100
            bar.update()
    assert caplog.records == []


def test_on_a_terminal_a_bar_with_rate_and_time_left(monkeypatch):
    class Terminal:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.delenv(console.LOG_VARIABLE, raising=False)
    with console.progress(4, "checking train images", "img") as bar:
        bar.update(2)
        bar.refresh()
    assert "checking train images:  50%" in terminal.text and "img/s]" in terminal.text and "<" in terminal.text


def write_features(path, rows, classes, rng):
    """A small feature file as build_feature_file writes it (rows of 6 floats)."""
    from vggbn.storage import features

    x = rng.normal(size=(rows, 6)).astype(np.float32)
    y = rng.integers(0, classes, rows)
    features.build_feature_file(path,
                                features.FeatureRows([f"{i}.png" for i in range(rows)], y.tolist(), ["0" * 32] * rows),
                                features.FeatureRecipe({"test": 1}, (6,), "float32"), lambda todo: iter([x[todo]]),
                                path.with_suffix(".work"))


def test_training_on_features_triggers_no_keras_warning(tmp_path, rng):
    """fit is given what it expects: shuffle=False for a dataset shuffled by us, and datasets whose number of
    batches is known, so it never runs out of data (70 valid rows at batch 16: a last, partial batch)."""
    import keras

    from vggbn.numerics.feature_training import TrainingPlan, train_on_features

    write_features(tmp_path / "train.h5", 50, 3, rng)
    write_features(tmp_path / "valid.h5", 70, 3, rng)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="predictions")(
        keras.layers.Dense(4, activation="relu", name="fc1")(inputs)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = train_on_features(model, TrainingPlan(epochs=2, batch_size=16, lr=1e-3, dropout=None, seed=0,
                                    shuffle_buffer=32), train_path=tmp_path / "train.h5", valid_path=tmp_path /
                                    "valid.h5").history
    assert len(history) == 2
    assert [str(w.message) for w in caught] == []


def small_dense(seed=0):
    import keras

    inputs = keras.Input((6,))
    init = keras.initializers.GlorotUniform(seed=seed)
    hidden = keras.layers.Dense(4, activation="relu", name="fc1", kernel_initializer=init)(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="predictions",
                                                  kernel_initializer=init)(hidden))


@pytest.fixture
def every_step(monkeypatch):
    """Progress lines at each tenth however fast the loop (as a slow loop of ImageNet scale would log them)."""
    monkeypatch.setattr(console, "LOG_INTERVAL", 0.0)
    monkeypatch.delenv(console.LOG_VARIABLE, raising=False)


def test_each_epoch_has_its_progress(tmp_path, rng, caplog, every_step):
    from vggbn.numerics.feature_training import TrainingPlan, train_on_features

    write_features(tmp_path / "train.h5", 64, 3, rng)
    write_features(tmp_path / "valid.h5", 20, 3, rng)
    caplog.set_level(logging.INFO, logger="vggbn")
    train_on_features(small_dense(), TrainingPlan(epochs=2, batch_size=16, lr=1e-3, dropout=None, seed=0,
                      shuffle_buffer=32), train_path=tmp_path / "train.h5", valid_path=tmp_path / "valid.h5")
    lines = progress_lines(caplog)
    for epoch in ("epoch 1/2", "epoch 2/2"):  # 4 steps: at 25%, 50% and 75%
        assert [line.split(" (")[0] for line in lines if line.startswith(epoch)] == [
            f"{epoch}: {p}%" for p in (25, 50, 75)]


def test_the_transfer_grid_has_one_bar_over_its_runs(tmp_path, rng, caplog, every_step):
    from vggbn.numerics.transfer import TransferGrid, compare_transfer

    write_features(tmp_path / "train.h5", 24, 2, rng)
    write_features(tmp_path / "valid.h5", 12, 2, rng)
    caplog.set_level(logging.INFO, logger="vggbn")
    report = compare_transfer({"with_bn": small_dense(1), "without_bn": small_dense(2)},
                              TransferGrid("dense", [1e-3, 1e-2], [0], 2, 8), train_path=tmp_path / "train.h5",
                              valid_path=tmp_path / "valid.h5", num_classes=2)
    assert set(report) == {"with_bn", "without_bn"}
    assert [line.split(" (")[0] for line in progress_lines(caplog)] == ["transfer runs: 25%", "transfer runs: 50%",
                                                                         "transfer runs: 75%"]
