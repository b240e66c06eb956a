"""End to end, robustness: kills mid-stage, two clean runs, a messy image folder and bad params, through real DVC.

Each test works on its own copy (`cp -a`) of the session's `pipeline` project, except the determinism test, which
checks out the same sources afresh. Kills are SIGKILLs to the process group of `dvc repro` (DVC and the stage).
"""

import errno
import filecmp
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from project import ENV, cached_output, copy_of, metrics, repro, run, set_param, stages_ran

pytestmark = pytest.mark.slow


@contextmanager
def background_repro(cwd: Path, *args: str, log: Path):
    """`dvc repro ARGS` in the background, in its own process group (DVC runs the stage in the same group);
    whatever still runs of it is killed when the block ends. Like `project.run`, with the copy's own `vggbn`."""
    with open(log, "w") as out:
        proc = subprocess.Popen(["dvc", "repro", *args], cwd=cwd, env={**ENV, "PYTHONPATH": str(cwd)}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 120) -> None:
    """SIGKILL the whole process group of `proc` as soon as `ready()` holds; wait until every process in it is gone."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the kill point:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no kill point after {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    while True:  # the stage's python is in the group too: wait for it to be gone before looking at its files
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "processes of the killed group survive SIGKILL"
        time.sleep(0.02)


def finished_looking(folder: Path) -> list[str]:
    """Files under `folder` that could be taken for finished outputs: everything but `.partial-*` and .gitignore."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith(".partial-") and p.name != ".gitignore")


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file by path (strings decoded), and every attribute as `path@name`."""
    out = {}
    with h5py.File(path, "r") as file:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj.asstr()[()] if h5py.check_string_dtype(obj.dtype) else obj[()]
            for key, value in obj.attrs.items():
                out[f"{name}@{key}"] = value
        visit("/", file)
        file.visititems(visit)
    return out


def assert_same_h5(a: Path, b: Path) -> None:
    left, right = h5_arrays(a), h5_arrays(b)
    assert sorted(left) == sorted(right), f"{a} and {b} hold different datasets"
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=f"{a.name}: {key}")


def assert_same_weights(a: Path, b: Path) -> None:
    """Two .keras files hold the same layers with bit-identical weights (layer by layer), and the same bytes."""
    import keras

    left, right = (keras.saving.load_model(p, safe_mode=True) for p in (a, b))
    assert [layer.name for layer in left.layers] == [layer.name for layer in right.layers]
    for x, y in zip(left.layers, right.layers):
        wx, wy = x.get_weights(), y.get_weights()
        assert len(wx) == len(wy), f"{a.name}: {x.name}"
        for i, (u, v) in enumerate(zip(wx, wy)):
            np.testing.assert_array_equal(u, v, err_msg=f"{a.name}: layer {x.name}, weight {i}")
    assert filecmp.cmp(a, b, shallow=False), f"{a} and {b} hold the same weights but differ in bytes"


# --- kills ---


def drop_cached_features(copy: Path) -> None:
    """Remove the previous run's features from the copy's DVC cache: conv_features then has no rows to reuse."""
    for split in ("train", "valid"):
        cached_output(copy, f"data/features/{split}.h5").unlink()


def test_conv_features_killed_mid_chunk_resumes_and_equals_an_uninterrupted_run(pipeline, tmp_path):
    """Killed mid-split, then one of its completed chunks damaged: the rerun resumes the intact chunks, recomputes
    the damaged one and gives the file an uninterrupted run gives, byte for byte. (The reference runs at the same
    batch size: on some CPUs a row's features differ in the last bits with the batch it is computed in.)"""
    project, _ = pipeline
    rows = metrics(project, "sample")["train_images"]
    with h5py.File(project / "data/features/train.h5") as file:
        row_shape = file["features"].shape[1:]
    copy, reference = copy_of(project, tmp_path / "killed"), copy_of(project, tmp_path / "reference")
    batch = 4  # chunks hold at most features.batch_size rows: 253 train chunks, so the kill lands mid-split
    for project_copy in (copy, reference):
        set_param(project_copy, "features.batch_size", batch)
        drop_cached_features(project_copy)  # no previous run's rows to reuse: every row is computed
        assert repro(project_copy, "sample") == ["listing"]  # all in place up to the sample: conv_features is next
    chunks = copy / "data/.work/conv_features/train"
    log = tmp_path / "killed.log"
    with background_repro(reference, "conv_features", log=tmp_path / "reference.log") as uninterrupted:
        with background_repro(copy, "conv_features", log=log) as proc:
            kill_when(proc, lambda: len(list(chunks.glob("chunk-*.npy"))) >= 3, log)

        done = sorted(chunks.glob("chunk-*.npy"))
        assert 3 <= len(done) < -(-rows // batch), "the kill came too late to leave the train split unfinished"
        for chunk in done:  # renamed into place only when whole
            assert np.load(chunk, allow_pickle=False).shape == (batch, *row_shape)
        assert finished_looking(copy / "data/features") == []
        assert not (copy / "metrics/conv_features.json").exists()
        assert all(p.name.startswith(("chunk-", ".partial-")) or p.name == "recipe.json" for p in chunks.iterdir())
        damaged = bytearray(done[1].read_bytes())  # a resumable chunk changed since it was written: one bit of it
        damaged[-5] ^= 0x10
        done[1].write_bytes(bytes(damaged))

        resumed = run(["dvc", "repro", "conv_features"], copy)
        assert sorted(stages_ran(resumed.stdout)) == ["conv_features", "listing", "model_listing"]
        assert f"{done[1].relative_to(copy)}: a chunk of an interrupted run fails its check (rows 4-7): " \
               "recomputed" in resumed.stderr
        assert uninterrupted.wait(timeout=900) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    stats = metrics(copy, "conv_features")
    assert stats["train_resumed"] == batch * (len(done) - 1) > 0 and stats["train_recomputed_corrupt"] == batch
    assert stats["train_computed"] == rows - batch * (len(done) - 1) and stats["train_reused"] == 0
    assert stats["valid_recomputed_corrupt"] == 0
    assert stats["split_max_abs_diff"] <= 1e-5
    for split in ("train", "valid"):
        assert_same_h5(copy / f"data/features/{split}.h5", reference / f"data/features/{split}.h5")
        assert (copy / f"data/features/{split}.h5").read_bytes() == \
            (reference / f"data/features/{split}.h5").read_bytes()
    with h5py.File(copy / "data/features/train.h5") as file:
        assert file["features"].chunks[0] == batch
    assert list(chunks.glob("chunk-*")) == []  # chunks are dropped once the file is assembled


def test_a_damaged_chunk_of_the_previous_features_is_recomputed_and_dvc_caches_the_good_file(pipeline, tmp_path):
    """The issue's case: 4 KB overwritten inside the previous run's features (their structure intact), then a
    rerun of conv_features. Those rows are recomputed, counted and named; the rest are reused; the result is a
    clean run's, and DVC's cache holds the good file again (DVC would otherwise check the damaged one out)."""
    project, _ = pipeline
    copy = copy_of(project, tmp_path)
    previous = cached_output(copy, "data/features/train.h5")
    with h5py.File(previous) as file:
        chunk_rows, rows = file["features"].chunks[0], file["features"].shape[0]
        info = file["features"].id.get_chunk_info(3)
    previous.chmod(0o644)  # DVC keeps cache objects read-only; a bad sector does not ask
    with open(previous, "r+b") as handle:
        handle.seek(info.byte_offset + 1000)
        handle.write(np.full(1024, 3.4e38, dtype=np.float32).tobytes())
    previous.chmod(0o444)

    result = run(["dvc", "repro", "-f", "-s", "conv_features"], copy)
    first, last = 3 * chunk_rows, 4 * chunk_rows - 1
    assert f"{previous}: rows {first}-{last} of the previous run's data/features/train.h5 fail their check: " \
           "recomputed" in result.stderr, result.stderr[-3000:]
    assert f"{previous}: removed DVC's cached copy of data/features/train.h5" in result.stderr
    stats = metrics(copy, "conv_features")
    assert stats["train_recomputed_corrupt"] == stats["train_computed"] == chunk_rows
    assert stats["train_reused"] == rows - chunk_rows
    assert stats["valid_computed"] == stats["valid_recomputed_corrupt"] == 0 and stats["valid_reused"] > 0
    for split in ("train", "valid"):
        assert_same_h5(copy / f"data/features/{split}.h5", project / f"data/features/{split}.h5")
        assert (copy / f"data/features/{split}.h5").read_bytes() == (project / f"data/features/{split}.h5").read_bytes()
    # DVC stored the new output under the same md5: the cache object is whole again, and nothing is out of date
    assert previous.read_bytes() == (project / "data/features/train.h5").read_bytes()
    assert "conv_features" not in run(["dvc", "status"], copy).stdout
    assert cached_output(copy, "data/features/train.h5") == previous  # dvc.lock records the same md5
    # The features are on disk once in the workspace and once in DVC's cache, not a third time in the work folder
    assert sorted(str(p.relative_to(copy)) for p in (copy / "data/.work/conv_features").rglob("*") if p.is_file()) \
        == ["data/.work/conv_features/train/recipe.json", "data/.work/conv_features/valid/recipe.json"]


def test_a_model_that_yields_nan_stops_conv_features_with_one_line_naming_the_image(pipeline, tmp_path):
    import keras

    project, _ = pipeline
    copy = copy_of(project, tmp_path / "project")
    from vggbn.numerics import models

    model = keras.saving.load_model(copy / "models/demo.keras", safe_mode=True)
    # The cut layer is linear: a fused Conv2D+BiasAdd+ReLU turns NaN into 0 on some CPUs (max pooling drops NaN
    # too), so cut where the model yields it, before any ReLU.
    model = models.copy_chain(model, name=model.name, configure=lambda layer, config: {
        **config, "activation": "linear"} if layer.name == "block3_conv2" else config)
    kernel, bias = model.get_layer("block3_conv2").get_weights()
    bias[7] = np.nan  # a damaged model file
    model.get_layer("block3_conv2").set_weights([kernel, bias])
    model.save(tmp_path / "broken.keras")
    set_param(copy, "model.source", str(tmp_path / "broken.keras"))
    set_param(copy, "model.preprocess", "caffe")
    set_param(copy, "features.cut", "block3_conv2")

    result = run(["dvc", "repro", "conv_features"], copy, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    first = (copy / "data/sample/train.tsv").read_text().splitlines()[1].split("\t")[0]
    assert errors == [f"error: data/demo/{first}: the conv part gives NaN for this image: is the model file broken "
                      "(NaN or huge weights), or the image one it cannot handle?"], output
    assert finished_looking(copy / "data/features") == []


def test_finetune_killed_after_an_epoch_resumes_and_equals_an_uninterrupted_run(pipeline, tmp_path):
    """Resumed from its last checkpoint, or, when that checkpoint was damaged since, trained again from the start:
    either way the result is the uninterrupted run's."""
    project, _ = pipeline
    reference, killed = copy_of(project, tmp_path / "reference"), copy_of(project, tmp_path / "killed")
    for copy in (reference, killed):
        set_param(copy, "finetune.epochs", 4)
        run(["rm", "-rf", "data/.work/finetune"], copy)  # the fixture's finished run left its last checkpoint there
    work = killed / "data/.work/finetune"
    log = tmp_path / "killed.log"
    # The uninterrupted reference runs alongside: the killed run only has to reach its first checkpoint.
    with background_repro(reference, "finetune", log=tmp_path / "reference.log") as uninterrupted:
        with background_repro(killed, "finetune", log=log) as proc:
            kill_when(proc, (work / "epoch.json").exists, log)

        state = json.loads((work / "epoch.json").read_text())
        assert state["epoch"] < 3, "the kill came too late: training had finished"
        assert (work / state["checkpoint"]).exists()
        assert not (killed / "metrics/finetune.json").exists()
        assert [p.name for p in (killed / "models").iterdir() if p.name.startswith("dense_bn_finetuned")] == []
        damaged = copy_of(killed, tmp_path / "damaged")  # the same interrupted run, its checkpoint damaged since
        checkpoint = damaged / "data/.work/finetune" / state["checkpoint"]
        data = bytearray(checkpoint.read_bytes())
        data[len(data) // 2] ^= 0x04
        checkpoint.write_bytes(bytes(data))

        resumed = run(["dvc", "repro", "finetune"], killed, env={**ENV, "VGGBN_LOG": "debug"})  # each epoch's logs
        assert sorted(stages_ran(resumed.stdout)) == ["finetune", "listing", "model_listing"]
        assert f"resuming from the checkpoint after epoch {state['epoch'] + 1}" in resumed.stderr
        assert "epoch 1/4: loss" not in resumed.stderr and "epoch 4/4: loss" in resumed.stderr
        restarted = run(["dvc", "repro", "finetune"], damaged, env={**ENV, "VGGBN_LOG": "debug"})
        assert "data/.work/finetune/epoch.json: the checkpoint of an interrupted run fails its check" in \
            restarted.stderr and f"{state['epoch'] + 1} epochs trained again" in restarted.stderr
        assert "epoch 1/4: loss" in restarted.stderr and "resuming" not in restarted.stderr
        assert uninterrupted.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]

    expected = metrics(reference, "finetune")
    assert expected["epochs"] == 4 and expected["epochs_recomputed_corrupt"] == 0
    for copy, lost in ((killed, 0), (damaged, state["epoch"] + 1)):
        assert_same_weights(copy / "models/dense_bn_finetuned.keras", reference / "models/dense_bn_finetuned.keras")
        assert metrics(copy, "finetune") == {**expected, "epochs_recomputed_corrupt": lost}
        curves = sorted((copy / "dvclive/finetune/plots").rglob("*.tsv"))
        assert len(curves) == 4  # train and eval loss and accuracy
        for curve in curves:
            steps = [line.split("\t")[0] for line in curve.read_text().splitlines()[1:]]
            assert steps == ["0", "1", "2", "3"], f"{curve}: every epoch exactly once"
            twin = reference / curve.relative_to(copy)
            assert curve.read_text() == twin.read_text(), f"{curve.name}: the resumed curve differs from the reference"


def test_kill_during_a_model_save_leaves_git_status_clean_and_the_next_run_removes_the_leftover(pipeline,
                                                                                                 tmp_path):
    project, _ = pipeline
    copy = copy_of(project, tmp_path / "project")
    models = copy / "models"

    def saving():
        return any(p.name.startswith(".partial-") for p in os.scandir(models))

    for attempt in range(6):  # a demo model saves in tens of milliseconds: poll fast, and try again if missed
        log = tmp_path / f"killed-{attempt}.log"
        with background_repro(copy, "-f", "-s", "insert_bn", log=log) as proc:
            while proc.poll() is None and not saving():
                time.sleep(0.0005)
            caught = proc.poll() is None
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if caught:
            break
    else:
        pytest.skip("no kill landed during a model save in 6 tries")
    time.sleep(0.5)  # the stage's python is in the killed group too
    left = sorted(p.name for p in models.iterdir() if p.name.startswith(".partial-"))
    assert left, "the kill left no temporary name: nothing to check"

    run(["dvc", "repro"], copy)  # DVC may restore insert_bn's outputs from its cache without running it
    assert run(["git", "status", "--porcelain"], copy).stdout == ""  # git ignores `.partial-*`
    run(["dvc", "repro", "-f", "-s", "insert_bn"], copy)  # the stage's next run clears what the killed one left
    leftovers = [str(p.relative_to(copy)) for p in copy.rglob(".partial-*") if ".dvc" not in p.parts]
    assert leftovers == [] and not list(models.glob("tmp*")), leftovers
    assert run(["git", "status", "--porcelain"], copy).stdout == ""


# --- a full disk ---


def fill_up(path: Path) -> None:
    """Takes every byte left on `path`'s file system, while a stage may be writing there too (what it takes between
    measuring the free space and allocating it makes the allocation fail: measure again)."""
    with open(path, "wb") as filler:
        for _ in range(100):
            free = shutil.disk_usage(path.parent).free
            if free == 0:
                return
            try:
                os.posix_fallocate(filler.fileno(), os.fstat(filler.fileno()).st_size, free)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
    raise AssertionError(f"{path.parent}: could not take all of its free space")


def test_a_disk_filling_up_during_conv_features_fails_in_one_line_and_the_rerun_resumes(pipeline, tmp_path,
                                                                                        small_disks):
    """On a small tmpfs mounted as the work folder, filled up by someone else half-way through the train split."""
    project, _ = pipeline
    rows = metrics(project, "sample")["train_images"]
    copy = copy_of(project, tmp_path / "project")
    drop_cached_features(copy)  # every row is computed
    work = copy / "data/.work/conv_features"
    shutil.rmtree(work)
    small_disks.mount("8m", at=work)  # the chunks need about 5 MB
    chunks = work / "train"
    log = tmp_path / "full.log"
    with background_repro(copy, "-s", "conv_features", log=log) as proc:
        deadline = time.monotonic() + 600
        while len(list(chunks.glob("chunk-*.npy"))) < 3:
            assert proc.poll() is None, f"the run ended before the disk filled:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        fill_up(work / "filler")
        assert proc.wait(timeout=600) != 0
    output = log.read_text()
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert re.fullmatch(r"error: data/\.work/conv_features/train/chunk-\d{6}-[0-9a-f]{32}\.npy: no space left on "
                        r"device: needs about [\d.]+ [KM]B, [\d.]+ (bytes|KB) free in data/\.work/conv_features/"
                        r"train; free some space and rerun", errors[0]), errors[0]
    kept = len(list(chunks.glob("chunk-*.npy")))
    assert kept >= 3 and list(work.rglob(".partial-*")) == []
    assert finished_looking(copy / "data/features") == [] and not (copy / "metrics/conv_features.json").exists()

    (work / "filler").unlink()  # space freed
    ran = run(["dvc", "repro", "-s", "conv_features"], copy)
    assert stages_ran(ran.stdout) == ["conv_features"]
    stats = metrics(copy, "conv_features")
    assert stats["train_resumed"] >= 64 * kept and stats["train_computed"] == rows - stats["train_resumed"]
    for split in ("train", "valid"):
        assert_same_h5(copy / f"data/features/{split}.h5", project / f"data/features/{split}.h5")


# --- determinism ---


def test_two_clean_runs_give_identical_manifests_features_statistics_and_models(pipeline, tmp_path):
    project, _ = pipeline
    fresh = tmp_path / "fresh"  # the very sources the fixture ran on (its first commit), without any output
    run(["git", "clone", "-q", str(project), str(fresh)], tmp_path)
    root_commit = run(["git", "rev-list", "--max-parents=0", "HEAD"], fresh).stdout.strip()
    run(["git", "checkout", "-q", root_commit], fresh)
    (fresh / "dvc.lock").unlink(missing_ok=True)  # the committed lock would let DVC restore cached outputs instead
    assert not (fresh / "data/demo").exists()
    ran = repro(fresh, "combine")  # the pipeline proper (the transfer side branch is left out: time)
    assert ran[-1] == "combine" and "conv_features" in ran and "demo_model" in ran

    for name in ("listing.tsv", "sample/train.tsv", "sample/valid.tsv", "sample/classes.txt", "sample/rejected.tsv"):
        assert (fresh / "data" / name).read_bytes() == (project / "data" / name).read_bytes(), name
    for name in ("features/train.h5", "features/valid.h5", "bn_stats.h5"):
        assert_same_h5(fresh / "data" / name, project / "data" / name)
    kerases = sorted(p.name for p in (fresh / "models").glob("*.keras"))
    assert {"demo.keras", "pretrained.keras", "dense_bn.keras", "dense_bn_finetuned.keras",
            "combined.keras"} <= set(kerases)
    for name in kerases:
        assert_same_weights(fresh / "models" / name, project / "models" / name)
    assert_same_h5(fresh / "models/combined.weights.h5", project / "models/combined.weights.h5")
    for stage in ran:
        if (fresh / "metrics" / f"{stage}.json").exists():
            assert metrics(fresh, stage) == metrics(project, stage), stage
    # Everything DVC records: deps, params and the hash of every output, for each stage both runs ran.
    locks = [yaml.safe_load((p / "dvc.lock").read_text())["stages"] for p in (fresh, project)]
    for stage in locks[0]:
        assert locks[0][stage] == locks[1][stage], f"dvc.lock differs for stage {stage}"


# --- a messy image folder ---


def _image(rng, size=40):
    from PIL import Image

    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def _jpeg_bytes(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_messy_folder(root: Path, outside: Path) -> tuple[dict, dict]:
    """An ImageNet-layout folder full of traps. Returns (usable: split -> {path: class}, unusable: {path: reason})."""
    from PIL import Image

    rng = np.random.default_rng(0)
    classes = ["alpha", "b class", "çé"]  # a space and non-ASCII letters in class names
    usable = {"train": {}, "valid": {}}
    unusable = {}

    def put(split, cls, name, write, ok=True, reason=None):
        path = root / split / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        rel = f"{split}/{cls}/{name}"
        if ok:
            usable[split][rel] = classes.index(cls)
        else:
            unusable[rel] = reason

    for split in ("train", "valid"):
        for cls in classes:
            put(split, cls, "plain.JPEG", lambda p: _image(rng).save(p, format="JPEG"))
            put(split, cls, "plain.png", lambda p: _image(rng).save(p, format="PNG"))
            put(split, cls, "with space ünïcödé 写真.jpg", lambda p: _image(rng).save(p, format="JPEG"))
        a, b, c = (f"{split}/{cls}" for cls in classes)
        # the formats and modes tf.io.decode_image turns into RGB
        put(split, "alpha", "gray.JPEG", lambda p: _image(rng).convert("L").save(p, format="JPEG"))
        put(split, "alpha", "cmyk.JPEG", lambda p: _image(rng).convert("CMYK").save(p, format="JPEG"))
        put(split, "b class", "rgba.png", lambda p: _image(rng).convert("RGBA").save(p, format="PNG"))
        put(split, "b class", "palette.png", lambda p: _image(rng).convert("P").save(p, format="PNG"))
        put(split, "çé", "sixteen bit.png", lambda p: Image.fromarray(
            rng.integers(0, 65536, (40, 40), dtype=np.uint16)).save(p, format="PNG"))
        put(split, "çé", "png inside.JPEG", lambda p: _image(rng).save(p, format="PNG"))
        put(split, "alpha", "alias.jpg", lambda p: p.symlink_to("../b class/plain.png"))  # inside the root: fine
        # the unusable ones
        put(split, "alpha", "empty.JPEG", lambda p: p.touch(), False, "empty file")
        put(split, "b class", "truncated.JPEG", lambda p: p.write_bytes(_jpeg_bytes(_image(rng))[:600]), False,
            "truncated")
        put(split, "çé", "notes.JPEG", lambda p: p.write_text("not a picture\n"), False, "not an image")
        put(split, "b class", "outside.jpg", lambda p: p.symlink_to(outside), False, "outside the data root")
        put(split, "çé", "dangling.png", lambda p: p.symlink_to(root / "nowhere.png"), False, "broken symlink")
        # skipped silently: hidden files and folders, other extensions
        for junk in (f"{a}/.DS_Store", f"{b}/._plain.JPEG", f"{c}/.hidden.png", f"{split}/.DS_Store",
                     f"{a}/.ipynb_checkpoints/copy.png"):
            (root / junk).parent.mkdir(parents=True, exist_ok=True)
            _image(rng).save(root / junk, format="PNG")
        (root / a / "readme.txt").write_text("class alpha\n")
    (root / ".DS_Store").write_bytes(b"\0\1\2")
    return usable, unusable


def test_messy_folder_runs_through_with_exactly_the_unusable_files_rejected(pipeline, tmp_path):
    from vggbn.numerics.models import build_demo_classifier, save_model

    project, _ = pipeline
    copy = copy_of(project, tmp_path / "project")
    outside = tmp_path / "elsewhere.jpg"
    _image(np.random.default_rng(1)).save(outside, format="JPEG")  # a good image, but outside the root
    root = tmp_path / "messy"
    usable, unusable = make_messy_folder(root, outside)
    model_path = tmp_path / "three_classes.keras"
    save_model(build_demo_classifier(input_size=32, num_classes=3, filters=(8, 16), dense_units=32, seed=1),
               model_path)
    set_param(copy, "data.root", str(root))
    set_param(copy, "model.source", str(model_path))
    set_param(copy, "model.preprocess", "caffe")

    ran = repro(copy, "combine")  # the pipeline proper; the transfer side branch would add 40 s
    assert ran == ["model_listing", "pretrained", "listing", "sample", "conv_features", "bn_stats", "insert_bn",
                   "finetune", "combine"]

    sample = copy / "data/sample"
    rejected = dict(line.split("\t") for line in (sample / "rejected.tsv").read_text("utf-8").splitlines()[1:])
    assert sorted(rejected) == sorted(unusable)
    for path, reason in unusable.items():
        assert reason in rejected[path], (path, rejected[path])
    assert (sample / "classes.txt").read_text("utf-8").splitlines() == ["alpha", "b class", "çé"]
    for split in ("train", "valid"):
        rows = [line.split("\t") for line in (sample / f"{split}.tsv").read_text("utf-8").splitlines()[1:]]
        assert {path: int(label) for path, label, _ in rows} == usable[split], split
        for path, _, md5 in rows:
            assert md5 == hashlib.md5((root / path).read_bytes()).hexdigest(), path
    counts = {"train_images": len(usable["train"]), "valid_images": len(usable["valid"]), "rejected": len(unusable)}
    assert {key: metrics(copy, "sample")[key] for key in counts} == counts
    features = metrics(copy, "conv_features")
    assert features["train_computed"] == counts["train_images"] and features["valid_computed"] == counts["valid_images"]
    assert features["split_max_abs_diff"] <= 1e-5
    assert metrics(copy, "insert_bn")["max_abs_diff"] <= 1e-5
    assert metrics(copy, "combine")["images"] == counts["valid_images"]


# --- bad params ---


@pytest.mark.parametrize("edit, expected", [
    (lambda text: text.replace("\nfinetune:\n", "\nfinetune:\n  lrr: 0.001\n"),
     "unknown key finetune.lrr (did you mean finetune.lr?)"),
    (lambda text: re.sub(r"(?m)^  lr: 0.0001$", "  lr: -0.0001", text),
     "finetune.lr: expected a finite number > 0, got -0.0001"),
    (lambda text: text.replace("resize: squash", "resize: stretch"),
     "features.resize: expected one of squash, center_crop, pad, got 'stretch'"),
], ids=["typo", "negative_lr", "unknown_resize"])
def test_bad_params_fail_fast_with_one_line_naming_the_key(pipeline, tmp_path, edit, expected):
    project, _ = pipeline
    copy = copy_of(project, tmp_path)
    params = copy / "params.yaml"
    edited = edit(params.read_text())
    assert edited != params.read_text()
    params.write_text(edited)

    def snapshot():
        return sorted((str(p.relative_to(copy)), p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
                      for folder in ("data/features", "data/.work") for p in (copy / folder).rglob("*"))

    before = snapshot()
    started = time.monotonic()
    result = run(["dvc", "repro"], copy, check=False)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert elapsed < 15, f"took {elapsed:.1f} s to fail"
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: params.yaml: ") and expected in errors[0], output
    assert "Traceback" not in output
    assert "Running stage 'conv_features'" not in output
    assert snapshot() == before  # nothing written to (or deleted from) data/features or the work folders
