"""End to end: the whole demo pipeline through `dvc repro`, then what reruns after a change."""

import json
import re

import h5py
import numpy as np
import pytest
import yaml

from project import copy_of, metrics, repro, run, set_param

pytestmark = pytest.mark.slow

from conftest import ALL_STAGES, ALWAYS_CHANGED, REPRO_CHANGES

def test_repro_runs_every_stage_and_the_insertion_is_exact(pipeline):
    project, ran = pipeline
    # With the committed dvc.lock, DVC may restore `pretrained` instead of running it: for the demo its output is
    # byte-identical to demo_model's, which is then already in the cache. The report is committed (cache: false),
    # so a repro that reproduces its inputs byte for byte leaves it as it is.
    assert set(ALL_STAGES) - set(ran) <= {"pretrained", "report"} and set(ran) <= set(ALL_STAGES)
    assert (project / "models/pretrained.keras").read_bytes() == (project / "models/demo.keras").read_bytes()
    assert metrics(project, "demo_model")["valid_accuracy"] >= 0.95
    identity = metrics(project, "insert_bn")
    assert identity["max_abs_diff"] <= 1e-5 and identity["max_abs_diff_logits"] <= 1e-4
    assert identity["accuracy_before"] == identity["accuracy_after"]
    transfer = metrics(project, "transfer")
    assert transfer["classes"] == ["7", "8", "9"]
    for start in ("with_bn", "without_bn"):
        assert set(transfer[start]["per_lr"]) == {"0.001", "0.01", "0.1"}
        assert transfer[start]["best_accuracy"] > 0.6  # three classes from 20 images each: well above chance
    assert identity["loss_before"] == pytest.approx(identity["loss_after"], abs=1e-5)
    assert metrics(project, "conv_features")["split_max_abs_diff"] <= 1e-5
    combined = metrics(project, "combine")
    assert combined["images"] == metrics(project, "sample")["valid_images"]
    assert combined["combined_accuracy"] >= 0.9
    with h5py.File(project / "data/features/train.h5") as f:
        assert f["features"].shape[1:] == (4, 4, 64) and f.attrs["cut"] == "block3_pool"
        assert f["features"].shape[0] == len(f["labels"]) == metrics(project, "sample")["train_images"]


# What must never reach the user: TensorFlow's native start-up lines, a Python warning, Keras' per-epoch lines,
# TensorFlow's retracing warning.
NOISE = re.compile(r"absl::InitializeLog|cuda drivers|oneDNN|cpu_feature_guard|rebuild TensorFlow|^[IWEF]\d{4} "
                   r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |\w+Warning: |warnings\.warn|^Epoch \d|retracing")


def test_repro_prints_one_screen_of_signal(pipeline):
    """A fresh clone's `dvc repro` prints at most 85 lines (15 stages), DVC's own included, and each stage that ran
    says what it did in one line, last: `HH:MM:SS <stage>: ...`."""
    lines = pipeline.log.splitlines()
    assert len(lines) <= 85, pipeline.log
    assert [line for line in lines if NOISE.search(line)] == [], pipeline.log
    for stage in pipeline[1]:
        said = [line for line in lines if re.match(rf"\d\d:\d\d:\d\d {stage}: ", line)]
        assert said, f"{stage} said nothing:\n{pipeline.log}"
        header = lines.index(f"Running stage '{stage}':")
        nxt = next((i for i in range(header + 1, len(lines)) if lines[i].startswith("Running stage")), len(lines))
        block = [line for line in lines[header:nxt] if re.match(r"\d\d:\d\d:\d\d ", line)]
        last = block[-1] if block else ""
        progress = re.search(r": \d+% \(", last)
        assert last == said[-1] and not progress, f"{stage} ends without a summary:\n{pipeline.log}"
    transfer = next(line for line in lines if re.match(r"\d\d:\d\d:\d\d transfer: \d+ classes", line))
    assert re.search(r"best with BN 0\.\d{3} at lr 1e-\d, without 0\.\d{3} at lr 1e-\d", transfer)


def _shape(value):
    """A metrics value's structure: its keys all the way down, and the type of each leaf."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def test_a_fresh_clone_reproduces_the_committed_lock_metrics_and_plots(pipeline):
    """The committed dvc.lock, metrics and plot tables are what this code and these params produce.

    On any CPU: each stage's command, params, dependency and output paths, and the hash of every dependency git
    tracks (code, the demo's inputs) are the committed ones, and every metrics file and plot table has the committed
    keys and rows. Bit for bit (`git status` clean) where the demo classifier trains to the committed bits: other
    CPUs round differently (AVX2, AVX-512, AMX kernels), and training turns the last bits into other weights, as the
    docs/robustness.md's Determinism says."""
    project, _ = pipeline
    committed = yaml.safe_load(run(["git", "show", "HEAD~1:dvc.lock"], project).stdout)["stages"]
    produced = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    tracked = set(run(["git", "ls-files"], project).stdout.splitlines())
    assert sorted(produced) == sorted(committed)
    for stage, entry in produced.items():
        before = committed[stage]
        assert (entry["cmd"], entry.get("params")) == (before["cmd"], before.get("params")), stage
        for kind in ("deps", "outs"):
            assert [d["path"] for d in entry.get(kind, [])] == [d["path"] for d in before.get(kind, [])], stage
        stale = [(d["path"], old["md5"], d["md5"]) for d, old in zip(entry.get("deps", []), before.get("deps", []))
                 if d["path"] in tracked and d["md5"] != old["md5"]]
        assert stale == [], f"{stage}: the committed dvc.lock was made with other code or inputs: {stale}"

    changed = run(["git", "diff", "--name-only", "HEAD~1", "HEAD"], project).stdout.split()
    for name in [name for name in changed if name.endswith((".json", ".csv", ".tsv"))]:  # not the report's PNGs
        before = run(["git", "show", f"HEAD~1:{name}"], project).stdout
        after = (project / name).read_text()
        if name.endswith(".json"):
            assert _shape(json.loads(after)) == _shape(json.loads(before)), f"{name}: other keys than committed"
        else:
            assert (after.splitlines()[0], len(after.splitlines())) == \
                   (before.splitlines()[0], len(before.splitlines())), f"{name}: other columns or rows than committed"

    demo_model = next(o["md5"] for o in produced["demo_model"]["outs"] if o["path"] == "models/demo.keras")
    if demo_model == next(o["md5"] for o in committed["demo_model"]["outs"] if o["path"] == "models/demo.keras"):
        changes = (project.parent / REPRO_CHANGES).read_text()
        assert changes == "", f"the first `dvc repro` of the committed project changed:\n{changes}"
    leftovers = [str(p.relative_to(project)) for p in project.rglob(".partial-*")]
    assert leftovers == []
    work = [p for p in (project / "data/.work").rglob("*") if p.is_file() and p.suffix in (".h5", ".npy")]
    assert work == [], "the features belong in the workspace and DVC's cache, not a third time in the work folder"


def test_second_repro_runs_only_the_listings(pipeline):
    project, _ = pipeline
    assert sorted(repro(project)) == ALWAYS_CHANGED
    assert run(["git", "status", "--porcelain"], project).stdout == ""


def test_changing_the_learning_rate_reruns_only_finetune_and_what_uses_its_model(pipeline, tmp_path):
    project, _ = pipeline
    copy_of(project, tmp_path)
    set_param(tmp_path, "finetune.lr", 0.0003)
    assert sorted(repro(tmp_path)) == sorted(["finetune", "combine", "transfer", "report"] + ALWAYS_CHANGED)
    assert json.loads((tmp_path / "metrics/finetune.json").read_text()) != metrics(project, "finetune")


def test_combined_model_holds_the_fine_tuned_dense_layers(pipeline):
    import keras

    project, _ = pipeline
    combined = keras.saving.load_model(project / "models/combined.keras", safe_mode=True)
    dense = keras.saving.load_model(project / "models/dense_bn_finetuned.keras", safe_mode=True)
    for name in ("fc1", "fc1_bn", "fc2", "fc2_bn", "predictions"):
        for a, b in zip(combined.get_layer(name).get_weights(), dense.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # The weights file alone, loaded into the same architecture freshly initialized, gives the combined model's weights
    fresh = keras.models.clone_model(combined)
    assert any(not np.array_equal(a, b) for a, b in zip(fresh.get_weights(), combined.get_weights()))
    fresh.load_weights(project / "models/combined.weights.h5")
    for layer in combined.layers:
        for a, b in zip(fresh.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=f"combined.weights.h5: {layer.name}")


def test_a_new_finetune_param_reruns_finetune_only_and_a_reworded_message_nothing(pipeline, tmp_path):
    """params.py is no stage's dependency: a new key in one section reruns the stages that read that section (and
    what their changed outputs feed), and a reworded validation message reruns nothing."""
    project = copy_of(pipeline[0], tmp_path)
    params_py = project / "vggbn/runner/params.py"
    source = params_py.read_text()
    anchor = '    compute: str = _param("float32", _choice(*COMPUTE_DTYPES), "dtype of the training math'
    assert source.count(anchor) == 1
    params_py.write_text(source.replace(anchor, '    note: str = _param("", None, "a free-text note on the run")\n'
                                                + anchor))
    params_yaml = project / "params.yaml"
    params_yaml.write_text(params_yaml.read_text().replace("  shuffle_buffer:", '  note: ""\n  shuffle_buffer:', 1))
    ran = repro(project)
    assert "finetune" in ran and set(ran) <= {"finetune", "combine", "transfer", "report", *ALWAYS_CHANGED}, ran
    assert metrics(project, "finetune") == metrics(pipeline[0], "finetune")

    reworded = params_py.read_text().replace("expected a non-empty list", "expected a list of at least one item")
    assert reworded != params_py.read_text()
    params_py.write_text(reworded)
    assert sorted(repro(project)) == ALWAYS_CHANGED
