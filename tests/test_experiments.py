"""Experiments, plots and shared remotes, end to end: real DVC, git and sshd on a copy of the `pipeline` project.

Every command runs with PYTHONPATH set to the copy it runs in, so a stage imports the copy's `vggbn` (the one
whose hashes dvc.lock records), not whatever the editable install of the working tree holds at that moment.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytest.register_assert_rewrite("remotes", "s3server")  # before their import, so loading them as plugins below
from project import ENV, copy_of, metrics, run, set_param, stages_ran  # does not warn
from remotes import configure_local_remote

pytest_plugins = ["remotes", "s3server"]  # the `sshd` and `s3` fixtures
pytestmark = pytest.mark.slow

# The stages a change of finetune.lr reruns up to `combine`. Experiments and reruns here target `combine`: that
# leaves out the transfer study, which trains a dozen models downstream of finetune and would double each run.
LR_STAGES = ["combine", "finetune", "listing", "model_listing"]


def dvc(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run(["dvc", *args], cwd, env=env or ENV)


def ran_stages(output: str) -> list[str]:
    return sorted(stages_ran(output))


def dvc_yaml(cwd: Path) -> dict:
    return yaml.safe_load((cwd / "dvc.yaml").read_text())


def always_changed(cwd: Path) -> list[str]:
    return sorted(name for name, stage in dvc_yaml(cwd)["stages"].items() if stage.get("always_changed"))


def cached_outs(cwd: Path) -> list[str]:
    """Outputs DVC keeps in its cache (every declared output not marked `cache: false`)."""
    paths = []
    for stage in dvc_yaml(cwd)["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                if isinstance(entry, str):
                    paths.append(entry)
                else:
                    paths += [path for path, opts in entry.items() if (opts or {}).get("cache", True)]
    return sorted(paths)


def stage_outs(cwd: Path, stage: str) -> list[str]:
    return [out["path"] for out in yaml.safe_load((cwd / "dvc.lock").read_text())["stages"][stage].get("outs", [])]


def lock_outs(cwd: Path) -> dict[str, str]:
    """path -> md5 of every stage output dvc.lock records."""
    lock = yaml.safe_load((cwd / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


# --- 1. experiments ---------------------------------------------------------------------------------------------

def experiments(show: list) -> dict[str, dict]:
    """name -> rev entry of each experiment in `dvc exp show --json` (DVC 3.x).

    The document is a list: {"rev": "workspace", ...} first, then one entry per baseline commit,
    {"rev": sha, "name": branch, "data": ..., "experiments": [{"name", "executor", "revs": [rev entry]}]}; a rev
    entry is {"rev", "name", "error", "data": {"params": {"params.yaml": {"data": {...}}},
    "metrics": {"metrics/x.json": {"data": {...}}}, "deps", "outs", ...}}.
    """
    found = {}
    for baseline in show:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = {**rev, "executor": experiment.get("executor")}
    return found


def wait_for_queue_workers(cwd: Path, timeout: float = 120) -> str:
    """`dvc exp run --run-all` returns when its tasks are done; its worker exits a few seconds later."""
    deadline = time.monotonic() + timeout
    while True:
        status = dvc(cwd, "queue", "status").stdout
        if "Worker status: 0 active, 0 idle" in status or time.monotonic() > deadline:
            return status
        time.sleep(1)


def test_experiments_run_queue_show_and_apply(pipeline, tmp_path):
    project = copy_of(pipeline[0], tmp_path / "project")
    baseline = {name: metrics(project, name) for name in ("insert_bn", "finetune", "combine")}

    runs = {"lr-3e-4": 0.0003}  # one run at once and one queued: each path once (every experiment is a training)
    for name, lr in runs.items():
        output = dvc(project, "exp", "run", "combine", "-n", name, "-S", f"finetune.lr={lr}").stdout
        assert ran_stages(output) == LR_STAGES, output[-2000:]

    queued = {"queued-5e-4": 0.0005}
    for name, lr in queued.items():
        dvc(project, "exp", "run", "--queue", "combine", "-n", name, "-S", f"finetune.lr={lr}")
    output = dvc(project, "exp", "run", "--run-all").stdout
    assert ran_stages(output) == sorted(LR_STAGES * len(queued)), output[-2000:]
    status = wait_for_queue_workers(project)
    assert all(re.search(rf"{name}\s+.*Success", status) for name in queued), status

    found = experiments(json.loads(dvc(project, "exp", "show", "--json").stdout))
    assert set(runs) | set(queued) <= set(found), sorted(found)
    for name, lr in {**runs, **queued}.items():
        entry = found[name]
        assert entry["error"] is None, entry["error"]
        assert entry["data"]["params"]["params.yaml"]["data"]["finetune"]["lr"] == lr
        shown = {key: value["data"] for key, value in entry["data"]["metrics"].items()}
        # The BN insertion is upstream of finetune: every experiment reuses it, identity error and all.
        assert shown["metrics/insert_bn.json"]["max_abs_diff"] == baseline["insert_bn"]["max_abs_diff"] <= 1e-5
        assert {"valid_loss", "valid_accuracy"} <= set(shown["metrics/finetune.json"])
        assert 0 <= shown["metrics/finetune.json"]["valid_accuracy"] <= 1
        assert 0 < shown["metrics/combine.json"]["combined_accuracy"] <= 1
    for name in queued:
        assert found[name]["executor"]["state"] == "success"
    losses = {name: found[name]["data"]["metrics"]["metrics/finetune.json"]["data"]["valid_loss"]
              for name in [*runs, *queued]}
    assert len(set(losses.values())) == len(losses), losses  # a different lr trains a different model
    assert baseline["finetune"]["valid_loss"] not in losses.values()

    # The curves of two experiments side by side, as `dvc plots diff` shows them.
    diff = json.loads(dvc(project, "plots", "diff", *runs, *queued, "--json").stdout)["data"]
    curve = diff[plot_id_for(project, "dvclive/finetune/plots/metrics/train/loss.tsv")][0]["content"]
    assert {row["rev"] for row in curve["data"]["values"]} == set(runs) | set(queued)

    applied = "queued-5e-4"
    dvc(project, "exp", "apply", applied)
    assert yaml.safe_load((project / "params.yaml").read_text())["finetune"]["lr"] == queued[applied]
    assert metrics(project, "finetune") == found[applied]["data"]["metrics"]["metrics/finetune.json"]["data"]


# --- 2. plots ---------------------------------------------------------------------------------------------------

def plot_id_for(cwd: Path, source: str) -> str:
    """The id under which `dvc plots show` draws `source`: the top-level plot of dvc.yaml that names it."""
    for plot in dvc_yaml(cwd)["plots"]:
        (plot_id, spec), = plot.items()
        ys = (spec or {}).get("y")
        if plot_id == source or (isinstance(ys, dict) and source in ys):
            return plot_id
    raise AssertionError(f"no top-level plot in dvc.yaml draws {source}")


def test_plots_show_every_curve_and_picture_with_data(pipeline, tmp_path):
    project = copy_of(pipeline[0], tmp_path / "project")
    shown = json.loads(dvc(project, "plots", "show", "--json").stdout)["data"]

    def values(plot_id: str) -> list[dict]:
        (entry,) = shown[plot_id]
        assert entry["type"] == "vega" and entry["revisions"] == ["workspace"]
        rows = entry["content"]["data"]["values"]
        assert rows, f"{plot_id}: no data"
        return rows

    # Training curves: each declared train and eval file gives one row per epoch, its last the stage's metric (valid_*
    # for eval, train_* for train where the stage reports it), accuracies in [0, 1]; the demo model learns from
    # random weights, so its loss falls.
    params = yaml.safe_load((project / "params.yaml").read_text())
    for run_name, epochs in {"demo_model": params["demo"]["epochs"], "finetune": params["finetune"]["epochs"]}.items():
        sources = [source for plot in dvc_yaml(project)["plots"] for spec in plot.values()
                   for source in ((spec or {}).get("y") or {}) if source.startswith(f"dvclive/{run_name}/")]
        assert {source.split("/")[-2] for source in sources} == {"train", "eval"}, f"{run_name}: {sources}"
        reported = metrics(project, run_name)
        for source in sources:
            field, label = Path(source).stem, "/".join(source.split("/")[-2:])
            rows = [row for row in values(plot_id_for(project, source)) if row.get("filename") == label]
            assert [int(row["step"]) for row in rows] == list(range(epochs)), source
            curve = [float(row[field]) for row in rows]
            assert all(0 <= value <= 1 for value in curve) if field == "accuracy" else min(curve) > 0, (source, curve)
            metric = f"{'valid' if label.startswith('eval/') else 'train'}_{field}"
            if metric in reported:
                assert curve[-1] == pytest.approx(reported[metric], rel=1e-6), (source, curve, metric)
            if run_name == "demo_model" and field == "loss":
                assert curve[-1] < curve[0] / 2, (source, curve)

    # Confusion matrix: one (actual, predicted) row per valid image.
    confusion = values(plot_id_for(project, "plots/confusion.csv"))
    assert len(confusion) == metrics(project, "combine")["images"]
    accuracy = sum(row["actual"] == row["predicted"] for row in confusion) / len(confusion)
    assert accuracy == pytest.approx(metrics(project, "combine")["combined_accuracy"])

    # BN calibration: one plot per BN layer, one point per unit; dead units (no variance) at (0, 0).
    stats = metrics(project, "bn_stats")
    plot_id_for(project, "plots/bn_calibration")
    layers = {plot_id.removeprefix("plots/bn_calibration/").removesuffix(".csv")
              for plot_id in shown if plot_id.startswith("plots/bn_calibration/")}
    assert layers == {key for key, value in stats.items() if isinstance(value, dict)}  # not strategy, replicas
    for layer in layers:
        rows = values(f"plots/bn_calibration/{layer}.csv")
        assert len(rows) == stats[layer]["units"]
        dead = [row for row in rows if row["dead"] == "1"]
        assert len(dead) == stats[layer]["dead_units"]
        assert all(float(row["mean"]) == float(row["std"]) == 0 for row in dead)
        assert all(float(row["std"]) > 0 for row in rows if row["dead"] == "0")

    # Identity: the top-class probability before and after inserting BN, one point per valid sample, on y = x.
    identity = values(plot_id_for(project, "plots/identity.csv"))
    assert len(identity) == metrics(project, "insert_bn")["samples"]
    assert max(abs(float(row["after"]) - float(row["before"])) for row in identity) <= 1e-5


# --- 3. remotes -------------------------------------------------------------------------------------------------

def round_trip(pipeline, tmp_path, configure, env):
    """Push the pipeline's outputs, pull them into a fresh git clone: nothing there needs computing again."""
    repo, clone = copy_of(pipeline[0], tmp_path / "repo"), tmp_path / "clone"
    configure(repo)
    run(["git", "add", "-A"], repo, env=env)  # the remote's URL; --local settings stay untracked
    run(["git", "commit", "-qm", "remote"], repo, env=env)
    dvc(repo, "push", env=env)

    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env=env)
    configure(clone)
    dvc(clone, "pull", env=env)
    rebuilt = {path for stage in always_changed(clone) for path in stage_outs(clone, stage)}  # the listings
    missing = [path for path in lock_outs(clone) if not (clone / path).exists() and path not in rebuilt]
    assert not missing, f"not in the clone after pull: {missing}"
    assert ran_stages(dvc(clone, "repro", env=env).stdout) == always_changed(clone)
    for path in rebuilt:  # rebuilt from the folders, byte for byte as recorded
        assert hashlib.md5((clone / path).read_bytes()).hexdigest() == lock_outs(clone)[path]
    status = json.loads(dvc(clone, "status", "--json", env=env).stdout)
    assert status == {name: ["always changed"] for name in always_changed(clone)}
    assert run(["git", "status", "--porcelain"], clone, env=env).stdout == ""  # the listings are byte-identical


def test_pipeline_round_trip_through_a_local_folder_remote(pipeline, tmp_path):
    remote = tmp_path / "remote"
    round_trip(pipeline, tmp_path, lambda repo: configure_local_remote(repo, remote), ENV)
    assert list((remote / "files" / "md5").rglob("*.dir"))


def test_pipeline_round_trip_through_an_ssh_remote(pipeline, tmp_path, sshd):
    remote = tmp_path / "remote"
    round_trip(pipeline, tmp_path, lambda repo: sshd.configure_dvc_remote(repo, remote), sshd.env)
    assert list((remote / "files" / "md5").rglob("*.dir"))


def lock_objects(cwd: Path) -> set[str]:
    """The cache objects dvc.lock refers to, as `files/md5/ab/cdef...` paths: each output and each file of each
    output directory (with the directory's own `.dir` listing)."""
    objects = set()
    outs = lock_outs(cwd)
    for md5 in (outs[path] for path in cached_outs(cwd)):
        objects.add(md5)
        if md5.endswith(".dir"):
            objects |= {entry["md5"] for entry in json.loads(cache_object(cwd, md5).read_text())}
    return {f"files/md5/{md5[:2]}/{md5[2:]}" for md5 in objects}


def file_bytes(path: Path) -> dict[str, bytes]:
    """{relative name: content} of a file, or of every file in a folder."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_pipeline_round_trip_through_an_s3_remote(pipeline, tmp_path, s3):
    """S3 as docs/remotes.md sets it up: `remote add` and `endpointurl` committed, the key from the environment."""
    prefix = "pipeline"
    round_trip(pipeline, tmp_path, lambda repo: s3.configure_dvc_remote(repo, prefix), s3.env)
    repo, clone = tmp_path / "repo", tmp_path / "clone"
    assert {key.removeprefix(f"{prefix}/") for key in s3.keys(prefix)} == lock_objects(repo)
    for path in cached_outs(clone):  # pulled byte for byte
        assert file_bytes(clone / path) == file_bytes(repo / path), path


def test_experiment_shared_through_s3_and_a_git_remote(pipeline, tmp_path, s3):
    """`dvc exp push` from one clone, `dvc exp pull` in another: the same `dvc exp show` row, the same outputs."""
    name, origin = "lr-3e-4", tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    mine = copy_of(pipeline[0], tmp_path / "mine")
    s3.configure_dvc_remote(mine, "experiments")
    run(["git", "commit", "-qam", "S3 remote"], mine)
    run(["git", "remote", "add", "origin", str(origin)], mine)
    run(["git", "push", "-q", "origin", "main"], mine)
    assert ran_stages(dvc(mine, "exp", "run", "combine", "-n", name, "-S", "finetune.lr=0.0003").stdout) == LR_STAGES
    dvc(mine, "exp", "push", "origin", name, env=s3.env)

    theirs = tmp_path / "theirs"
    run(["git", "clone", "-q", str(origin), str(theirs)], tmp_path)
    assert experiments(json.loads(dvc(theirs, "exp", "show", "--json").stdout)) == {}
    dvc(theirs, "exp", "pull", "origin", name, env=s3.env)
    shown = {cwd.name: experiments(json.loads(dvc(cwd, "exp", "show", "--json").stdout))
             for cwd in (mine, theirs)}
    assert list(shown["theirs"]) == [name]
    row = shown["theirs"][name]
    assert row["error"] is None and row["data"]["params"]["params.yaml"]["data"]["finetune"]["lr"] == 0.0003
    assert row == shown["mine"][name]  # rev, params, metrics, deps and outs alike

    # The experiment's outputs came through S3: applying it checks them out of the pulled cache, byte for byte.
    dvc(theirs, "exp", "apply", name)
    assert lock_outs(theirs) == lock_outs(mine)
    for path in cached_outs(theirs):
        assert file_bytes(theirs / path) == file_bytes(mine / path), path


# --- 4. linked cache --------------------------------------------------------------------------------------------

def cache_object(cwd: Path, md5: str) -> Path:
    return cwd / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def corrupt_cache_objects(cwd: Path) -> list[str]:
    """Cache files whose content no longer hashes to their name (a `.dir` object hashes to its name too)."""
    bad = []
    for path in (cwd / ".dvc" / "cache" / "files" / "md5").rglob("*"):
        if path.is_file():
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            if digest != path.parent.name + path.name.removesuffix(".dir"):
                bad.append(str(path.relative_to(cwd)))
    return bad


def assert_outputs_linked(cwd: Path) -> None:
    """Every cached output file is the cache's own file (a hard link, or a symlink to it), read-only."""
    outs = lock_outs(cwd)
    for path in cached_outs(cwd):
        md5 = outs[path]
        files = {path: md5}
        if md5.endswith(".dir"):
            listing = json.loads(cache_object(cwd, md5).read_text())
            files = {f"{path}/{entry['relpath']}": entry["md5"] for entry in listing}
        for name, digest in files.items():
            assert (cwd / name).samefile(cache_object(cwd, digest)), f"{name} is a copy, not a link"
            assert not (cwd / name).stat().st_mode & 0o222, f"{name} is writable"


def test_linked_cache_outputs_are_never_written_in_place(pipeline, tmp_path):
    project = copy_of(pipeline[0], tmp_path / "project")
    dvc(project, "config", "cache.type", "hardlink,symlink")
    dvc(project, "checkout", "--relink")  # every cached output becomes the cache's read-only file
    assert ran_stages(dvc(project, "repro").stdout) == always_changed(project)
    assert_outputs_linked(project)

    set_param(project, "finetune.lr", 0.0003)  # finetune and combine read linked inputs, write new outputs
    assert ran_stages(dvc(project, "repro", "combine").stdout) == LR_STAGES

    # A forced rerun (this stage only) rebuilds the features from the previous run's file, read from DVC's cache
    # where dvc.lock says it is (the linked output itself was removed by DVC before the run); they come out
    # byte-identical, so nothing downstream reruns.
    assert ran_stages(dvc(project, "repro", "-f", "-s", "conv_features").stdout) == ["conv_features"]
    features = metrics(project, "conv_features")
    assert features["train_reused"] > 0 and features["train_computed"] == features["valid_computed"] == 0
    assert ran_stages(dvc(project, "repro", "combine").stdout) == ["listing", "model_listing"]

    assert_outputs_linked(project)
    assert corrupt_cache_objects(project) == []
