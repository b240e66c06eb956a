"""The one line each stage logs when it is done, from its metrics."""

import json
from pathlib import Path

import pytest

from vggbn.runner.summary import FORMATTERS, summary

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")


def test_every_stage_script_has_a_summary():
    assert sorted(FORMATTERS) == SCRIPTS


@pytest.mark.parametrize("path", sorted((ROOT / "metrics").glob("*.json")), ids=lambda p: p.stem)
def test_the_committed_metrics_summarize(path):
    line = summary(path.stem, json.loads(path.read_text()))
    assert "\n" not in line and 20 < len(line) < 240


def test_the_lines_say_what_happened():
    assert summary("conv_features", {
        "train_computed": 1000, "train_reused": 11, "train_resumed": 0, "valid_computed": 0, "valid_reused": 253,
        "valid_resumed": 0, "split_max_abs_diff": 0.0, "split_checked_images": 253}) == (
        "train 1,011 rows (1,000 computed, 11 reused, 0 resumed), valid 253 rows (0 computed, 253 reused, 0 resumed); "
        "dense-on-features diff 0 over 253 images")
    assert summary("insert_bn", {
        "bn_layers": 2, "max_abs_diff": 1.19e-07, "max_abs_diff_logits": 3.81e-06, "accuracy_before": 0.99209,
        "accuracy_after": 0.99209, "samples": 253, "loss_before": 0.02, "loss_after": 0.02}) == (
        "2 BN layers, max_abs_diff 1.2e-07 (logits 3.8e-06), accuracy 0.9921 -> 0.9921 on 253 valid rows")
    transfer = {start: {"best_accuracy": 0.908, "best_lr": 0.001, "spread": spread, "per_lr": {}}
                for start, spread in (("with_bn", 0.43), ("without_bn", 0.22))}
    assert summary("transfer", {**transfer, "classes": ["7", "8", "9"], "train_mode": "dense"}) == (
        "3 classes, all dense layers trained: best with BN 0.908 at lr 1e-3, without 0.908 at lr 1e-3; spread over "
        "learning rates 0.43 with BN, 0.22 without")
    assert summary("sample", {"train_images": 5, "valid_images": 2, "rejected": 1}) == (
        "5 train and 2 valid images; 1 unusable file replaced (rejected.tsv names them)")
    assert summary("listing", {"root": "/data/imagenet", "rows": 1_283_169, "files": 1_281_167, "folders": 2002,
                               "links": 0, "bad_names": 2}) == (
        "/data/imagenet: 1,281,167 files in 2,002 folders, 2 bad names")
    assert summary("report", {"folder": "report", "tables": 5, "figures": 1}) == (
        "report/index.html and report/README.md: 5 tables, 1 figure")
    many = {f"block{i}_conv1": {"units": 64, "dead_units": i, "rows": 10} for i in range(1, 6)}
    assert summary("bn_stats", many) == "5 layers, 320 units (15 dead: variance 0)"


def test_model_listing_says_what_it_hashed():
    assert summary("model_listing", {"files": 0, "hashed": 0, "reused": 0}) == (
        "no model file named (model.source is demo or vgg16)")
    assert summary("model_listing", {"files": 1, "hashed": 0, "reused": 1}) == (
        "1 model file: 0 hashed, 1 unchanged since hashed")
