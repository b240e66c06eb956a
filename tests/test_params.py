import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vggbn.runner.params import ParamsError, documented_params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.data.root == "data/demo" and params.model.source == "demo"


def test_every_param_in_the_file_is_known_and_every_known_param_is_in_the_file():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    in_file = {f"{section}.{key}" for section, values in raw.items() for key in values}
    assert in_file == {key for key, _, _ in documented_params()}


def test_yaml_12_floats_as_dvc_writes_them(tmp_path):
    (tmp_path / "p.yaml").write_text("finetune:\n  lr: 1e-4\n")
    assert load_params(tmp_path / "p.yaml").finetune.lr == 1e-4


@pytest.mark.parametrize("raw, message", [
    ({"finetune": {"lrr": 0.1}}, r"unknown key finetune\.lrr \(did you mean finetune\.lr\?\)"),
    ({"fintune": {}}, r"unknown key fintune \(did you mean finetune\?\)"),
    ({"finetune": {"lr": 0}}, r"finetune\.lr: expected a finite number > 0, got 0\.0"),
    ({"finetune": {"lr": -1e-3}}, r"finetune\.lr: expected a finite number > 0"),
    ({"finetune": {"lr": "fast"}}, r"finetune\.lr: expected a number, got 'fast'"),
    ({"finetune": {"batch_size": 0}}, r"finetune\.batch_size: expected a value >= 1, got 0"),
    ({"finetune": {"batch_size": 2.5}}, r"finetune\.batch_size: expected an integer, got 2\.5"),
    ({"finetune": {"epochs": True}}, r"finetune\.epochs: expected an integer, got True"),
    ({"finetune": {"dropout": 1.0}}, r"finetune\.dropout: expected a number >= 0 and < 1"),
    ({"sample": {"train": 0}}, r"sample\.train: expected a value >= 1 or null|sample\.train: expected a value >= 1"),
    ({"sample": {"strict": "yes"}}, r"sample\.strict: expected true or false, got 'yes'"),
    ({"features": {"resize": "crop"}}, r"features\.resize: expected one of squash, center_crop, pad, got 'crop'"),
    ({"bn": {"layers": "everything"}}, r"bn\.layers: expected one of dense, conv, all"),
    ({"data": {"root": None}}, r"data\.root: expected str, got null"),
    ({"finetune": 3}, r"finetune\.: expected a mapping"),
    ({"model": {"source": "vgg16", "preprocess": "tf"}}, r"model\.preprocess: expected null for model\.source=vgg16"),
    ({"model": {"source": "my.keras"}}, r"model\.preprocess: expected one of caffe, tf, torch, none for a model file"),
    ({"model": {"weights": "imagenet"}}, r"model\.weights: expected null unless model\.source=vgg16"),
])
def test_bad_params_name_the_key_and_what_is_allowed(raw, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml: cannot read params"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("finetune: [unclosed\n")
    with pytest.raises(ParamsError, match="bad.yaml: not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_a_stage_fails_on_a_bad_param_within_seconds_without_importing_tensorflow(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["finetune"]["lr"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "stages/finetune.py"), "--model", "m",
                             "--train", "t", "--valid", "v", "--out", "o", "--work", "w", "--live", "l",
                             "--metrics", "x"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert error_lines == ["error: params.yaml: finetune.lr: expected a finite number > 0, got -1.0"]
    assert "tensorflow" not in result.stderr  # -X importtime lists every module imported
    assert time.monotonic() - started < 10


def test_docs_document_every_param_with_its_default():
    import json

    reference = (ROOT / "docs" / "params.md").read_text()
    for key, default, doc in documented_params():
        assert f"| `{key}` | `{json.dumps(default)}` | {doc} |" in reference, f"docs/params.md's params table lacks {key}"


def test_an_unknown_cut_layer_fails_the_first_stage_at_once(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["features"]["cut"] = "block3_pol"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, str(ROOT / "stages/listing.py"), "--out", "listing.tsv"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: params.yaml: features.cut: model.source=demo has no layer 'block3_pol' "
                                    "(did you mean block3_pool?)")
    assert not (tmp_path / "listing.tsv").exists()
