"""A full disk, for real, on small tmpfs file systems mounted by the test (skipped where mounting is not allowed):
one line naming the path and the space it needed, no file that looks complete, and a rerun after space is freed
resumes where it stopped."""

import json
import os
import shutil

import h5py
import numpy as np
import pytest

from vggbn.storage import atomic, features
from vggbn.runner import stage
from vggbn.storage.tables import write_json
from vggbn.numerics.models import build_demo_classifier, save_model

ROW_SHAPE = (16, 16, 8)  # 8 KB a row in float32


def manifest(n):
    return [f"train/c/img {i}.png" for i in range(n)], [0] * n, [f"md5-{i}" for i in range(n)]


class Extractor:
    def __init__(self, paths):
        self.paths, self.rows = paths, []

    def __call__(self, rows):
        for start in range(0, len(rows), 4):
            chunk = rows[start:start + 4]
            self.rows.extend(chunk)
            yield np.stack([np.full(ROW_SHAPE, i, dtype=np.float32) for i in chunk])


def build(out, work, n, extractor):
    paths, labels, md5s = manifest(n)
    return features.build_feature_file(out, features.FeatureRows(paths, labels, md5s),
                                       features.FeatureRecipe({}, ROW_SHAPE, "float32", chunk_rows=4), extractor, work)


def only_finished(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".partial-"))


def fill(disk):
    """Take every free byte of `disk`, as other users of a shared disk do."""
    with open(disk / "filler", "wb") as file:
        os.posix_fallocate(file.fileno(), 0, shutil.disk_usage(disk).free)


class FillingExtractor(Extractor):
    """Fills the disk once `after` rows are computed."""

    def __init__(self, paths, disk, after):
        super().__init__(paths)
        self.disk, self.after = disk, after

    def __call__(self, rows):
        for batch in super().__call__(rows):
            if len(self.rows) == self.after:
                fill(self.disk)
            yield batch


def test_a_disk_that_fills_up_stops_at_the_chunk_being_written_and_the_rerun_resumes(small_disks, tmp_path):
    work = small_disks.mount("1200k")  # room for the 16 chunks (32 KB each) and the finished file
    out = work / "train.h5"
    with pytest.raises(atomic.DiskFullError) as caught:
        build(out, work, 64, FillingExtractor(manifest(64)[0], work, after=24))
    message = str(caught.value)
    assert message.startswith(f"{work}/chunk-0000") and ": no space left on device: needs about" in message
    assert "free in" in message and "\n" not in message
    kept = sorted(work.glob("chunk-*.npy"))
    assert 5 <= len(kept) <= 6 and only_finished(work) == sorted(["filler", "recipe.json", *(p.name for p in kept)])

    (work / "filler").unlink()  # space freed
    second = Extractor(manifest(64)[0])
    stats = build(out, work, 64, second)
    assert stats == {"computed": 64 - 4 * len(kept), "reused": 0, "resumed": 4 * len(kept), "recomputed_corrupt": 0}
    assert second.rows == list(range(4 * len(kept), 64))
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["features"][:, 0, 0, 0], np.arange(64, dtype=np.float32))
    assert only_finished(work) == ["recipe.json", "train.h5"]


def test_features_that_cannot_fit_fail_before_any_work(small_disks, tmp_path):
    disk = small_disks.mount("256k")
    first = Extractor(manifest(64)[0])
    with pytest.raises(atomic.DiskFullError, match=rf"^{disk}/train\.h5: not enough space on device: needs about "
                                                   r"5\d\d\.\d KB, \d+\.\d KB free in "):
        build(disk / "train.h5", tmp_path / "work", 64, first)
    assert first.rows == [] and only_finished(disk) == []
    with pytest.raises(atomic.DiskFullError, match=rf"^{disk}/chunk-\*\.npy: not enough space on device: needs "
                                                   r"about 1\.\d MB"):  # the chunks and the file on one disk
        build(disk / "train.h5", disk, 64, first)

    small_disks.resize(disk, "2m")
    assert build(disk / "train.h5", tmp_path / "work", 64, first)["computed"] == 64


def test_a_model_save_on_a_full_disk_leaves_nothing(small_disks):
    disk = small_disks.mount("64k")
    model = build_demo_classifier(input_size=32, num_classes=5, filters=(8, 16), dense_units=64)
    with pytest.raises(atomic.DiskFullError, match=rf"^{disk}/model\.keras: not enough space on device: needs about "
                                                   r"\d+\.\d KB, "):
        save_model(model, disk / "model.keras")
    assert list(disk.iterdir()) == []  # neither the file nor Keras' staging


def test_a_checkpoint_on_a_full_disk_fails_in_one_line_and_keeps_the_last_one(small_disks, tmp_path):
    from vggbn.numerics.feature_training import Checkpoints, TrainingPlan, train_on_features
    import keras

    rng = np.random.default_rng(0)
    files = {}
    for split in ("train", "valid"):
        files[split] = tmp_path / f"{split}.h5"
        values = rng.normal(size=(32, 2, 2, 3)).astype(np.float32)
        features.build_feature_file(files[split],
                                    features.FeatureRows([str(i) for i in range(32)], [i % 3 for i in range(32)],
                                                         [str(i) for i in range(32)]),
                                    features.FeatureRecipe({}, (2, 2, 3), "float32"),
                                    lambda rows, v=values: iter([v[rows]]), tmp_path / "w" / split)
    inputs = keras.Input((2, 2, 3))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(1500, activation="relu")(x)  # 72 KB of weights, 216 KB with Adam's slots
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    work = small_disks.mount("400k")
    with pytest.raises(atomic.DiskFullError, match=rf"^{work}/checkpoint-0001\.keras: no space left on device"):
        train_on_features(model, TrainingPlan(epochs=3, batch_size=8, lr=0.01, dropout=None, seed=0, shuffle_buffer=16),
                          train_path=files["train"], valid_path=files["valid"],
                          checkpoints=Checkpoints(work, {"r": 1}))
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-0000.keras", "epoch.json", "recipe.json"]
    assert json.loads((work / "epoch.json").read_text())["epoch"] == 0  # the record still names a whole checkpoint


def test_any_other_writer_on_a_full_disk_is_one_line_from_the_stage_runner(small_disks, capsys, monkeypatch):
    disk = small_disks.mount("16k")
    (disk / "filler").write_bytes(b"x" * 16384)
    monkeypatch.setattr("sys.argv", ["stage", "--live", str(disk / "live"), "--metrics", "metrics.json"])

    def main():
        with open(disk / "live.tsv", "w") as file:  # as dvclive writes its files: the error names no file
            file.write("x" * 100_000)
            file.flush()

    assert stage.exit_status(main) == 2
    error = capsys.readouterr().err  # the stage's output on the full file system is named
    assert error.startswith(f"error: {disk}/live: no space left on device: 0 bytes free in {disk}; ")
    assert error.count("\n") == 1

    def metrics():
        write_json(disk / "metrics.json", {"x": "y" * 100_000})

    assert stage.exit_status(metrics) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {disk}/metrics.json: no space left on device: needs about 100.0 KB")
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "live.tsv"]
