"""The `vggbn` command: predict and info on a tiny model, one-line errors for bad inputs, and a fast --help."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggbn import cli

CLASSES = ["cat", "dog", "fish"]
IMAGE_SIZES = [(40, 60), (32, 32), (50, 20), (33, 47)]  # not square: center_crop differs from squash


def tiny_model(num_classes=3):
    from vggbn.numerics.models import build_demo_classifier

    return build_demo_classifier(input_size=32, num_classes=num_classes, filters=(4, 8), dense_units=8)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder: the combined model, params.yaml (center_crop), the sample's classes.txt and PNG images."""
    from vggbn.numerics.models import save_model

    root = tmp_path_factory.mktemp("cli")
    (root / "models").mkdir()
    save_model(tiny_model(), root / "models" / "combined.keras")
    (root / "params.yaml").write_text("features:\n  resize: center_crop\n  batch_size: 3\n")
    (root / "data" / "sample").mkdir(parents=True)
    (root / "data" / "sample" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate(IMAGE_SIZES):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"img{i}.png")
    return root


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.chdir(project)
    return project


IMAGES = [f"images/img{i}.png" for i in range(len(IMAGE_SIZES))]


def run(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def expected_probabilities(paths, model_path="models/combined.keras", resize="center_crop"):
    from vggbn.numerics import images, models

    model = models.load_model_file(model_path)
    return model.predict(images.load_batch(paths, (32, 32), resize, "caffe"), verbose=0)


# --- predict ---

def test_predict_json_is_the_models_top_k_with_the_pipelines_preprocessing(in_project, capsys):
    code, out, err = run(capsys, "predict", "--json", "--top", 2, *IMAGES)
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert (report["resize"], report["preprocess"], report["top"]) == ("center_crop", "caffe", 2)
    expected = expected_probabilities(IMAGES)
    assert not np.allclose(expected, expected_probabilities(IMAGES, resize="squash"))  # the resize mode matters
    assert [entry["path"] for entry in report["images"]] == IMAGES
    for entry, probabilities in zip(report["images"], expected):
        rows = entry["predictions"]
        order = np.argsort(-probabilities, kind="stable")[:2]
        assert [row["rank"] for row in rows] == [1, 2]
        assert [row["index"] for row in rows] == list(order)
        assert [row["class"] for row in rows] == [CLASSES[i] for i in order]
        assert rows[0]["probability"] >= rows[1]["probability"]
        np.testing.assert_allclose([row["probability"] for row in rows], probabilities[order], atol=1e-6)


def test_predict_text_has_one_block_per_image(in_project, capsys):
    code, out, err = run(capsys, "predict", "--top", 3, *IMAGES[:2])
    assert (code, err) == (0, "")
    blocks = out.rstrip("\n").split("\n\n")
    expected = expected_probabilities(IMAGES[:2])
    assert len(blocks) == 2
    for block, path, probabilities in zip(blocks, IMAGES, expected):
        lines = block.splitlines()
        assert lines[0] == path
        rows = [line.split() for line in lines[1:]]
        order = np.argsort(-probabilities, kind="stable")
        assert [row[0] for row in rows] == ["1", "2", "3"]
        assert [row[1] for row in rows] == [CLASSES[i] for i in order]
        np.testing.assert_allclose([float(row[2]) for row in rows], probabilities[order], atol=6e-5)


def test_predict_shows_at_most_every_class(in_project, capsys):
    code, out, _ = run(capsys, "predict", "--top", 10, IMAGES[0])
    assert code == 0 and len(out.strip().splitlines()) == 1 + len(CLASSES)


def test_predict_names_imagenet_classes(in_project, capsys):
    from vggbn.storage.imagenet import imagenet_names, imagenet_wnids
    from vggbn.numerics.models import save_model

    save_model(tiny_model(1000), "models/imagenet.keras")
    code, out, err = run(capsys, "predict", "--model", "models/imagenet.keras", "--top", 1, "--json", IMAGES[0])
    assert (code, err) == (0, "")
    row = json.loads(out)["images"][0]["predictions"][0]
    wnid = imagenet_wnids()[row["index"]]
    assert (row["class"], row["name"]) == (wnid, imagenet_names()[wnid])
    code, out, _ = run(capsys, "predict", "--model", "models/imagenet.keras", "--top", 1, IMAGES[0])
    assert out.splitlines()[1].split()[:3] == ["1", wnid, imagenet_names()[wnid]]


def test_predict_falls_back_to_output_indices(in_project, capsys):
    from vggbn.numerics.models import save_model

    save_model(tiny_model(4), "models/four.keras")
    code, out, err = run(capsys, "predict", "--model", "models/four.keras", "--json", IMAGES[0])
    assert code == 0 and "4 outputs" in err
    assert sorted(row["class"] for row in json.loads(out)["images"][0]["predictions"]) == ["0", "1", "2", "3"]


def test_top_k_keeps_output_order_on_ties():
    from vggbn.commands.predict import top_k

    assert top_k([0.2, 0.4, 0.4, 0.0], 3) == [1, 2, 0]


@pytest.fixture(scope="module")
def bad_inputs(project):
    """Files that must be refused with one line each."""
    import keras

    good = (project / "images" / "img0.png").read_bytes()
    (project / "bad").mkdir()
    (project / "bad" / "notes.png").write_text("not an image\n")
    (project / "bad" / "truncated.png").write_bytes(good[:len(good) // 2])
    (project / "bad" / "folder.png").mkdir()
    (project / "bad" / "params.yaml").write_text("features:\n  resise: squash\n")
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    x = keras.layers.Flatten()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(project / "bad" / "lambda.keras")
    return project


@pytest.mark.parametrize("args, names", [
    (["predict", "images/nope.png"], ["images/nope.png", "no such image file"]),
    (["predict", IMAGES[0], "bad/notes.png"], ["bad/notes.png", "not an image"]),
    (["predict", "bad/truncated.png"], ["bad/truncated.png", "truncated"]),
    (["predict", "bad/folder.png"], ["bad/folder.png", "folder"]),
    (["predict", "--model", "models/nope.keras", IMAGES[0]], ["models/nope.keras", "not found"]),
    (["predict", "--model", "bad/lambda.keras", IMAGES[0]], ["bad/lambda.keras", "safe_mode"]),
    (["predict", "--top", "0", IMAGES[0]], ["--top", ">= 1", "got 0"]),
    (["predict", "--top", "-2", IMAGES[0]], ["--top", "got -2"]),
    (["predict", "--params", "bad/params.yaml", IMAGES[0]], ["features.resise", "did you mean features.resize"]),
    (["predict", "--classes", "nope.txt", IMAGES[0]], ["nope.txt", "not found"]),
    (["info", "models/nope.keras"], ["models/nope.keras", "not found"]),
    (["info", "bad/lambda.keras"], ["bad/lambda.keras", "safe_mode"]),
])
def test_bad_inputs_give_one_line_errors(bad_inputs, in_project, capsys, args, names):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for name in names:
        assert name in err


def test_missing_params_file_is_explained(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "predict", "--model", project / "models" / "combined.keras", project / IMAGES[0])
    assert code == 2 and err == "error: params.yaml: no params file here: run in the project folder or pass --params\n"


# --- info ---

def bn_project(root, position, dead_unit=True):
    """models/bn.keras (the tiny model with calibrated BN), data/bn_stats.h5 and metrics/*.json under `root`."""
    from vggbn.numerics import surgery
    from vggbn.numerics.models import save_model
    from vggbn.storage.statistics import save_statistics
    from vggbn.numerics.moments import Moments

    rng = np.random.default_rng(1)
    moments = {}
    for name in ("fc1", "fc2"):
        rows = np.abs(rng.normal(size=(50, 8)))
        if dead_unit and name == "fc1":
            rows[:, 0] = 0.0
        moments[name] = Moments(8).update(rows)
    (root / "data").mkdir(exist_ok=True)
    save_statistics(root / "data" / "bn_stats.h5", moments, {"position": position, "layers": "dense"})
    model = surgery.insert_bn(tiny_model(), {name: (m.mean, m.variance) for name, m in moments.items()}, position)
    (root / "models").mkdir(exist_ok=True)
    save_model(model, root / "models" / "bn.keras")
    (root / "metrics").mkdir(exist_ok=True)
    for stage, values in {"insert_bn": {"max_abs_diff": 1.2e-7, "samples": 10}, "finetune": {"valid_accuracy": 0.5},
                          "combine": {"combined_accuracy": 0.75, "original_accuracy": 0.625}}.items():
        (root / "metrics" / f"{stage}.json").write_text(json.dumps(values))
    return model


@pytest.mark.parametrize("position", ["after_activation", "before_activation"])
def test_info_reports_bn_layers_and_their_calibration(in_tmp, capsys, position):
    model = bn_project(in_tmp, position)
    code, out, err = run(capsys, "info", "models/bn.keras", "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert [layer["name"] for layer in report["layers"]] == [layer.name for layer in model.layers]
    assert report["params"]["total"] == model.count_params()
    assert sum(layer["params"] for layer in report["layers"]) == model.count_params()
    bn = {layer["name"]: layer for layer in report["batch_norm_layers"]}
    assert list(bn) == ["fc1_bn", "fc2_bn"]
    assert [layer["batch_norm"] for layer in report["layers"]] == [layer.name in bn for layer in model.layers]
    for name, dead in (("fc1_bn", 1), ("fc2_bn", 0)):
        calibration = bn[name]["calibration"]
        assert bn[name]["position"] == position  # read off the model
        assert (calibration["layer"], calibration["units"], calibration["dead_units"], calibration["position"]) == (
            name[:-3], 8, dead, position)
        assert calibration["moving_mean_shift"] < 1e-6  # freshly calibrated: the moving mean is the measured mean
    assert report["metrics"] == {"insert_bn": {"max_abs_diff": 1.2e-7}, "finetune": {"valid_accuracy": 0.5},
                                 "combine": {"combined_accuracy": 0.75, "original_accuracy": 0.625}}

    code, out, _ = run(capsys, "info", "models/bn.keras")
    lines = out.splitlines()
    assert any(line.split()[:3] == ["BN", "fc1_bn", "BatchNormalization"] for line in lines)
    assert not any(line.startswith("BN") and "Dense" in line for line in lines)
    assert f"  fc1_bn: 8 units, {position}, calibrated on fc1 (data/bn_stats.h5): 1 dead unit (variance 0)" in out
    assert "insert_bn max_abs_diff 1.2e-07" in out and "combine combined_accuracy 0.7500" in out


def test_info_without_stats_or_bn(in_project, capsys):
    code, out, err = run(capsys, "info")  # the project's combined model: no BN, no stats, no metrics
    assert (code, err) == (0, "")
    assert "models/combined.keras: model 'demo_vgg', input (32, 32, 3), 3 outputs" in out
    assert "batch normalization: none" in out and "run metrics" not in out


def test_info_tells_whether_files_are_those_of_the_recorded_run(in_tmp, capsys):
    bn_project(in_tmp, "after_activation")
    (in_tmp / "data" / "bn_stats.h5").unlink()
    model_md5 = hashlib.md5(Path("models/bn.keras").read_bytes()).hexdigest()  # what DVC records
    lock = "schema: '2.0'\nstages:\n  combine:\n    outs:\n    - path: models/bn.keras\n      md5: {}\n"
    (in_tmp / "dvc.lock").write_text(lock.format(model_md5))
    code, out, _ = run(capsys, "info", "models/bn.keras")
    assert "no BN statistics file, calibration unknown" in out
    assert "dvc.lock: models/bn.keras is as recorded" in out
    (in_tmp / "dvc.lock").write_text(lock.format("0" * 32))
    code, out, _ = run(capsys, "info", "models/bn.keras", "--json")
    assert json.loads(out)["dvc_lock"] == {"models/bn.keras": "differs"}


# --- start-up ---

@pytest.mark.parametrize("args", [["--help"], ["predict", "--help"], ["info", "--help"], ["export", "--help"],
                                  ["report", "--help"], ["plots-template", "--help"], ["launch", "--help"]])
def test_help_is_fast_and_imports_neither_tensorflow_nor_dvc_nor_vl_convert(args):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "vggbn.cli", *args], capture_output=True,
                          text=True, timeout=30)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and done.stdout.startswith("usage: vggbn")
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "vggbn" in imported  # the listing is real (vggbn.cli itself runs as __main__)
    assert not {name for name in imported if name.split(".")[0] in ("tensorflow", "keras", "dvc", "vl_convert")}
    assert elapsed < 1.0, f"{args} took {elapsed:.2f} s"


def fresh_process(args, cwd):
    """The command as a user runs it: a new process (TensorFlow imported there), no TF_CPP_MIN_LOG_LEVEL set."""
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "VGGBN_LOG")}
    return subprocess.run([sys.executable, "-m", "vggbn.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def test_predict_prints_only_its_answer(in_project, capsys):
    """No TensorFlow start-up line, no warning: stdout is the answer, stderr is empty."""
    done = fresh_process(["predict", "--top", "2", *IMAGES[:2]], in_project)
    _, expected, _ = run(capsys, "predict", "--top", 2, *IMAGES[:2])
    assert (done.returncode, done.stderr, done.stdout) == (0, "", expected)


def test_info_prints_only_its_answer(in_project):
    done = fresh_process(["info"], in_project)
    assert done.returncode == 0 and done.stderr == "" and done.stdout.startswith("models/combined.keras: model")


def test_a_bad_log_level_is_a_one_line_error(in_project, monkeypatch, capsys):
    monkeypatch.setenv("VGGBN_LOG", "verbose")
    code, out, err = run(capsys, "predict", IMAGES[0])
    assert (code, out) == (2, "") and err == "error: VGGBN_LOG='verbose': expected one of debug, info, warning\n"


@pytest.mark.skipif(shutil.which("vggbn") is None, reason="the vggbn console script is not installed")
def test_console_script():
    done = subprocess.run(["vggbn", "predict", "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "--top K" in done.stdout
