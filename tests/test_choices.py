"""The choice matrix: every documented value of every enumerated or boolean key of params.yaml runs the stages it
reaches, end to end on the demo, and passes their own proofs (the split check where features are cut, identity
<= 1e-5 where BN is inserted, the end-to-end identity where BN goes into the conv part).

The defaults are the session's own repro (`pipeline`, every stage). Every other value is one line in GROUPS; a group
is one `dvc repro` (of a copy of that project) up to the last stage its values reach, so values that touch
different stages share a run. A new value in the params schema without a line here fails
`test_every_documented_value_has_a_matrix_entry`.
"""

import json
import shutil

import h5py
import pytest
from project import copy_of, metrics, repro, set_param

from vggbn.runner.params import Params, documented_choices

# Small samples keep each group's conv features and trainings to seconds; transfer trains once per start and lr.
CHEAP = {"sample.train": 140, "sample.valid": 70, "finetune.epochs": 1, "transfer.epochs": 2}
MODEL_FILE = "models/classifier.keras"  # the demo classifier, copied: a model file (model.preprocess applies)

# group -> (the params it sets, the last stage it needs: its repro target, None for the whole pipeline)
GROUPS = {
    "conv_bn": ({
        "bn.layers": "conv",
        "bn.position": "before_activation",
        "features.resize": "center_crop",
        "features.dtype": "float16",
        "features.compute": "bfloat16",
        "sample.strict": True,
        "model.preprocess": "tf",
        "finetune.compute": "float16",  # Keras mixed_float16 with loss scaling
    }, "combine"),
    "all_bn": ({
        "bn.layers": "all",
        "features.resize": "pad",
        "features.flip": True,
        "features.cut": "block3_conv2",  # inside the conv part: BN `all` then also lands in the cached part's tail
        "finetune.compute": "bfloat16",
        "transfer.train": "dense",
        "model.preprocess": "caffe",
    }, None),
    "torch": ({"model.preprocess": "torch", "features.compute": "float16"}, "insert_bn"),
    "none": ({"model.preprocess": "none"}, "insert_bn"),
}
IDENTITY_BOUND = 1e-5  # BN inserted: the same function, to float32 rounding


def split_bound(settings: dict) -> float:
    """The split check's bound: float32 rounding, or the rounding of features computed in bfloat16 or stored in
    float16 (the whole model it is compared with computes in float32)."""
    reduced = settings.get("features.dtype", "float32") != "float32" or \
        settings.get("features.compute", "float32") != "float32"
    return 1e-2 if reduced else 1e-5


def test_every_documented_value_has_a_matrix_entry():
    """Defaults run in the session's repro; each other documented value in some group."""
    defaults = {f"{section}.{key}": value for section, values in
                ((s, vars(getattr(Params(), s))) for s in vars(Params()))
                for key, value in values.items()}
    covered = {(key, value) for settings, _ in GROUPS.values() for key, value in settings.items()}
    missing = [f"{key}: {value}" for key, values in documented_choices().items() for value in values
               if value != defaults[key] and (key, value) not in covered]
    assert not missing, f"documented values no choice group runs (add each to GROUPS): {missing}"
    assert {"bn.layers", "features.resize", "model.preprocess", "transfer.train"} <= set(documented_choices())
    # a subset sampled and a cut other than the default, which no enumeration lists
    assert any("features.cut" in settings for settings, _ in GROUPS.values())
    assert all(key in CHEAP for key in ("sample.train", "sample.valid"))


@pytest.fixture(scope="module")
def group_runs(pipeline, tmp_path_factory):
    """{group: (project, stages that ran)}: one repro per group, on a copy of the session's project."""
    runs = {}
    for name, (settings, target) in GROUPS.items():
        project = copy_of(pipeline[0], tmp_path_factory.mktemp(name))
        shutil.rmtree(project / "data/.work", ignore_errors=True)  # no resume: each group computes its own
        if "model.preprocess" in settings:
            shutil.copy(project / "models/demo.keras", project / MODEL_FILE)
            set_param(project, "model.source", MODEL_FILE)
        for key, value in {**CHEAP, **settings}.items():
            set_param(project, key, value)
        runs[name] = project, repro(project, *([target] if target else []))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", GROUPS)
def test_each_choice_group_passes_its_stages_proofs(group_runs, name):
    project, ran = group_runs[name]
    settings, target = GROUPS[name]
    reached = {"pretrained", "sample", "conv_features", "bn_stats", "insert_bn"}
    reached |= {"finetune", "combine"} if target in ("combine", None) else set()
    reached |= {"transfer", "report"} if target is None else set()
    assert reached <= set(ran), ran
    split = metrics(project, "conv_features")
    assert split["split_checked_images"] > 0 and split["split_max_abs_diff"] <= split_bound(settings), split
    with h5py.File(project / "data/features/train.h5") as f:
        recipe = json.loads(f.attrs["feature_recipe"])
        assert f["features"].dtype.name == settings.get("features.dtype", "float32")
        assert f["features"].shape[0] == CHEAP["sample.train"] * (2 if settings.get("features.flip") else 1)
    for key in ("resize", "compute"):
        assert recipe[key] == settings.get(f"features.{key}", getattr(Params().features, key)), recipe
    assert recipe["preprocess"] == settings.get("model.preprocess", "caffe") and recipe["cut"] == settings.get(
        "features.cut", recipe["cut"]), recipe
    identity = metrics(project, "insert_bn")
    assert identity["max_abs_diff"] <= IDENTITY_BOUND, identity
    assert identity["accuracy_before"] == identity["accuracy_after"], identity
    layers = settings.get("bn.layers", "dense")
    assert ("end_to_end_max_abs_diff" in identity) == (layers != "dense"), identity
    if layers != "dense":
        assert identity["end_to_end_samples"] > 0 and identity["end_to_end_max_abs_diff"] <= IDENTITY_BOUND
    if target in ("combine", None):
        combined = metrics(project, "combine")
        assert combined["images"] == CHEAP["sample.valid"], combined
        assert metrics(project, "finetune")["epochs"] == 1
    if target is None:
        assert metrics(project, "transfer")["train_mode"] == settings.get("transfer.train", "head")
    print(f"\n{name}: ran {ran}; split {split['split_max_abs_diff']:.2e}; identity {identity['max_abs_diff']:.2e}")


@pytest.mark.slow
def test_a_model_file_retrained_in_place_reruns_exactly_pretrained_and_what_follows(group_runs, tmp_path):
    """`model.source` names a file (the `torch` group's): unchanged, a repro reruns nothing but the listings; trained
    one more epoch and saved over itself, `pretrained` and everything downstream of it rerun, nothing else."""
    import keras
    import numpy as np

    project = copy_of(group_runs["torch"][0], tmp_path / "project")
    target = GROUPS["torch"][1]
    assert sorted(repro(project, target)) == ["listing", "model_listing"]
    model = keras.saving.load_model(project / MODEL_FILE, safe_mode=True)
    images = np.random.default_rng(0).uniform(0, 255, (16, *model.input_shape[1:])).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    model.fit(images, np.arange(16) % model.output_shape[-1], epochs=1, verbose=0)
    model.save(project / MODEL_FILE)
    ran = repro(project, target)
    assert sorted(ran) == sorted(["listing", "model_listing", "pretrained", "conv_features", "bn_stats", "insert_bn"])
    assert metrics(project, "insert_bn")["max_abs_diff"] <= IDENTITY_BOUND
