import logging
import shutil

import h5py
import numpy as np
import pytest

from vggbn.storage import features
from vggbn.storage.dvccache import CachedOutput
from vggbn.storage.hashing import file_md5

RECIPE = {"model_md5": "abc", "cut": "block2_pool"}


def manifest(n):
    return [f"train/c{i % 3}/img {i}.png" for i in range(n)], [i % 3 for i in range(n)], [f"md5-{i}" for i in range(n)]


def fake_features(paths_by_row):
    """Deterministic 'features' for a row: derived from its path, as a model's output is from its image."""
    return np.stack([np.full((2, 2, 3), hash(p) % 1000, dtype=np.float32) for p in paths_by_row])


class Extractor:
    def __init__(self, paths, fail_after_batches=None, batch=4):
        self.paths, self.fail_after, self.batch, self.rows_computed = paths, fail_after_batches, batch, []

    def __call__(self, rows):
        for i, start in enumerate(range(0, len(rows), self.batch)):
            if self.fail_after is not None and i == self.fail_after:
                raise KeyboardInterrupt("killed")
            chunk = rows[start:start + self.batch]
            self.rows_computed.extend(chunk)
            yield fake_features([self.paths[r] for r in chunk])


def build(out, work, paths, labels, md5s, extractor, recipe=RECIPE, previous=None, work_recipe=None):
    recipe = features.FeatureRecipe(recipe, (2, 2, 3), "float32", chunk_rows=5, attrs={"cut": "block2_pool"},
                                    work=work_recipe)
    return features.build_feature_file(out, features.FeatureRows(paths, labels, md5s), recipe, extractor, work,
                                       previous=previous)


def cached(path, cache_dir):
    """`path` as DVC would hold it after committing it: a read-only copy named by its md5, as dvc.lock records it."""
    md5 = file_md5(path)
    target = cache_dir / md5[:2] / md5[2:]
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    target.chmod(0o444)
    return CachedOutput(str(path.name), target, md5, target.stat().st_size)


def corrupt_chunk(path, chunk, offset=40):
    """Overwrite bytes inside HDF5 chunk `chunk` of `features`, leaving the file's structure intact."""
    with h5py.File(path, "r") as file:
        info = file["features"].id.get_chunk_info(chunk)
    path.chmod(0o644)
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset + offset)
        handle.write(b"\xff" * 8)


def test_one_go_writes_features_labels_paths(tmp_path):
    paths, labels, md5s = manifest(23)
    stats = build(tmp_path / "f.h5", tmp_path / "work", paths, labels, md5s, Extractor(paths))
    assert stats == {"computed": 23, "reused": 0, "resumed": 0, "recomputed_corrupt": 0}
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["features"].chunks == (5, 2, 2, 3) and len(f["chunk_digests"]) == 5
        np.testing.assert_array_equal(f["features"][:], fake_features(paths))
        assert list(f["labels"][:]) == labels and list(f["paths"].asstr()[:]) == paths
        assert f.attrs["cut"] == "block2_pool"
    assert features.feature_cut(tmp_path / "f.h5") == "block2_pool"


def test_interrupted_run_leaves_no_output_and_resumes_at_the_last_chunk(tmp_path):
    paths, labels, md5s = manifest(23)
    out, work = tmp_path / "f.h5", tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        build(out, work, paths, labels, md5s, Extractor(paths, fail_after_batches=3))
    assert not out.exists() and not list(tmp_path.glob(".partial-*"))
    resumed = Extractor(paths)
    stats = build(out, work, paths, labels, md5s, resumed)
    assert stats["resumed"] == 10 and stats["computed"] == 13  # chunks of 5 rows: 2 completed before the kill
    assert resumed.rows_computed == list(range(10, 23))
    one_go = tmp_path / "one_go.h5"
    build(one_go, tmp_path / "work2", paths, labels, md5s, Extractor(paths))
    with h5py.File(out) as a, h5py.File(one_go) as b:
        np.testing.assert_array_equal(a["features"][:], b["features"][:])


def test_chunks_of_another_replica_count_are_recomputed_not_resumed(tmp_path):
    paths, labels, md5s = manifest(23)
    out, work = tmp_path / "f.h5", tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        build(out, work, paths, labels, md5s, Extractor(paths, fail_after_batches=3), work_recipe={"replicas": 2})
    again = Extractor(paths)
    stats = build(out, work, paths, labels, md5s, again, work_recipe={"replicas": 1})  # bytes summed otherwise
    assert stats["resumed"] == 0 and stats["computed"] == 23 and again.rows_computed == list(range(23))


def test_changed_manifest_reuses_unchanged_rows_from_the_previous_run(tmp_path):
    paths, labels, md5s = manifest(30)
    out, work = tmp_path / "f.h5", tmp_path / "work"
    build(out, work, paths, labels, md5s, Extractor(paths))
    previous = cached(out, tmp_path / "cache")
    out.unlink()  # dvc repro deletes declared outputs before running the stage
    assert sorted(p.name for p in work.iterdir()) == ["recipe.json"]  # no second copy of the features kept here
    new_paths = paths[:28] + ["train/c0/new a.png", "train/c1/new b.png"]
    new_md5s = md5s[:27] + ["changed-content"] + ["md5-a", "md5-b"]
    second = Extractor(new_paths)
    stats = build(out, work, new_paths, labels, new_md5s, second, previous=previous)
    assert stats == {"computed": 3, "reused": 27, "resumed": 0, "recomputed_corrupt": 0}
    assert sorted(second.rows_computed) == [27, 28, 29]
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["features"][:], fake_features(new_paths))
    assert previous.path.exists()  # an intact previous file stays in the cache


def test_no_reuse_across_recipes(tmp_path):
    paths, labels, md5s = manifest(10)
    work = tmp_path / "work"
    build(tmp_path / "a.h5", work, paths, labels, md5s, Extractor(paths))
    previous = cached(tmp_path / "a.h5", tmp_path / "cache")
    stats = build(tmp_path / "b.h5", work, paths, labels, md5s, Extractor(paths), recipe={**RECIPE, "cut": "x"},
                  previous=previous)
    assert stats["computed"] == 10 and stats["reused"] == 0


# --- nothing reused without being checked ---


def assert_equal_files(a, b):
    with h5py.File(a) as x, h5py.File(b) as y:
        for name in ("features", "labels", "flipped"):
            np.testing.assert_array_equal(x[name][:], y[name][:], err_msg=name)
        assert list(x["paths"].asstr()[:]) == list(y["paths"].asstr()[:])
        assert dict(x.attrs) == dict(y.attrs)


def test_a_corrupt_chunk_of_the_previous_file_is_recomputed_and_dropped_from_the_cache(tmp_path, caplog):
    paths, labels, md5s = manifest(30)
    clean, work = tmp_path / "clean.h5", tmp_path / "work"
    build(clean, work, paths, labels, md5s, Extractor(paths))
    previous = cached(clean, tmp_path / "cache")
    corrupt_chunk(previous.path, 2)  # rows 10-14
    with h5py.File(previous.path) as f:  # the file still opens and the other chunks read fine
        f["features"][:10], f["features"][15:]
    rerun = Extractor(paths)
    with caplog.at_level(logging.WARNING):
        stats = build(tmp_path / "f.h5", work, paths, labels, md5s, rerun, previous=previous)
    assert stats == {"computed": 5, "reused": 25, "resumed": 0, "recomputed_corrupt": 5}
    assert rerun.rows_computed == [10, 11, 12, 13, 14]
    assert (tmp_path / "f.h5").read_bytes() == clean.read_bytes()  # a clean run's file, byte for byte
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(previous.path) in w and "rows 10-14" in w and "fail their check" in w for w in warnings), warnings
    assert not previous.path.exists()  # DVC would otherwise check the corrupt object out again


def test_a_previous_file_of_the_wrong_size_is_not_used(tmp_path, caplog):
    paths, labels, md5s = manifest(12)
    clean, work = tmp_path / "clean.h5", tmp_path / "work"
    build(clean, work, paths, labels, md5s, Extractor(paths))
    previous = cached(clean, tmp_path / "cache")
    previous.path.chmod(0o644)
    with open(previous.path, "r+b") as handle:  # an interrupted copy
        handle.truncate(previous.size // 2)
    with caplog.at_level(logging.WARNING):
        stats = build(tmp_path / "f.h5", work, paths, labels, md5s, Extractor(paths), previous=previous)
    assert stats["computed"] == 12 and stats["reused"] == 0
    assert_equal_files(tmp_path / "f.h5", clean)
    assert any("damaged" in r.getMessage() and str(previous.path) in r.getMessage() for r in caplog.records)
    assert not previous.path.exists()


def test_a_previous_file_without_digests_is_not_reused(tmp_path):
    paths, labels, md5s = manifest(6)
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as f:  # as versions before digests wrote it
        f.create_dataset("features", data=fake_features(paths), chunks=(5, 2, 2, 3))
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int32))
        f.create_dataset("paths", data=paths, dtype=features.STRING)
        f.create_dataset("md5", data=md5s, dtype=features.STRING)
        f.create_dataset("flipped", data=np.zeros(6, dtype=bool))
        f.attrs["feature_recipe"] = '{"cut": "block2_pool", "model_md5": "abc"}'
    stats = build(tmp_path / "f.h5", tmp_path / "work", paths, labels, md5s, Extractor(paths),
                  previous=cached(old, tmp_path / "cache"))
    assert stats["computed"] == 6 and stats["reused"] == 0


def test_a_corrupt_resumable_chunk_is_recomputed(tmp_path, caplog):
    paths, labels, md5s = manifest(23)
    out, work = tmp_path / "f.h5", tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        build(out, work, paths, labels, md5s, Extractor(paths, fail_after_batches=3))
    done = sorted(work.glob("chunk-*.npy"))
    assert len(done) == 2 and all(features.CHUNK_FILE.match(p.name) for p in done)
    data = bytearray(done[1].read_bytes())
    data[-7] ^= 0x01  # one bit of one value of rows 5-9
    done[1].write_bytes(bytes(data))
    resumed = Extractor(paths)
    with caplog.at_level(logging.WARNING):
        stats = build(out, work, paths, labels, md5s, resumed)
    assert stats == {"computed": 18, "reused": 0, "resumed": 5, "recomputed_corrupt": 5}
    assert sorted(resumed.rows_computed) == list(range(5, 23))
    build(tmp_path / "clean.h5", tmp_path / "work2", paths, labels, md5s, Extractor(paths))
    assert out.read_bytes() == (tmp_path / "clean.h5").read_bytes()
    assert any(done[1].name in r.getMessage() and "rows 5-9" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in work.iterdir()) == ["recipe.json"]


def test_leftovers_of_earlier_runs_are_removed(tmp_path):
    paths, labels, md5s = manifest(7)
    work = tmp_path / "work"
    build(tmp_path / "a.h5", work, paths, labels, md5s, Extractor(paths))
    (work / "chunk-000000.npy").write_bytes(b"a chunk name not ours")
    (work / ".partial-999999999-chunk-000001-0123.npy").write_bytes(b"a killed write")
    stats = build(tmp_path / "b.h5", work, paths, labels, md5s, Extractor(paths))
    assert stats["computed"] == 7
    assert sorted(p.name for p in work.iterdir()) == ["recipe.json"]


# --- non-finite values stop where they start ---


def test_non_finite_features_name_the_image_and_leave_no_file(tmp_path):
    paths, labels, md5s = manifest(12)

    def broken(rows):
        for start in range(0, len(rows), 4):
            batch = fake_features([paths[r] for r in rows[start:start + 4]])
            if start == 4:
                batch[2, 0, 1, 2] = np.nan  # row 6
            yield batch

    out, work = tmp_path / "f.h5", tmp_path / "work"
    with pytest.raises(features.NonFiniteFeatures, match=r"^images/train/c0/img 6\.png: the conv part gives NaN"):
        features.build_feature_file(out, features.FeatureRows(paths, labels, md5s),
                                    features.FeatureRecipe(RECIPE, (2, 2, 3), "float32", chunk_rows=5), broken, work,
                                    image_root="images")
    assert not out.exists() and not list(tmp_path.glob(".partial-*"))
    assert len(list(work.glob("chunk-*.npy"))) == 1  # rows 0-4 stay done


def test_values_beyond_float16_name_the_image_and_the_dtype(tmp_path):
    paths, labels, md5s = manifest(3)

    def huge(rows):
        yield np.full((len(rows), 2, 2, 3), 1e6, dtype=np.float32)

    with pytest.raises(features.NonFiniteFeatures, match=r"img 0\.png: its features reach 1e\+06, beyond what "
                                                         r"features.dtype float16 can hold"):
        features.build_feature_file(tmp_path / "f.h5", features.FeatureRows(paths, labels, md5s),
                                    features.FeatureRecipe(RECIPE, (2, 2, 3), "float16"), huge, tmp_path / "w")


def test_reading_a_truncated_feature_file_is_a_one_line_error_naming_it(tmp_path):
    paths, labels, md5s = manifest(30)
    out = tmp_path / "f.h5"
    build(out, tmp_path / "work", paths, labels, md5s, Extractor(paths))
    with h5py.File(out) as f:
        end = f["features"].id.get_chunk_info(3).byte_offset
    with open(out, "r+b") as handle:  # an interrupted copy
        handle.truncate(end + 16)
    with pytest.raises(features.FeatureFileError, match=r"f\.h5: cannot open feature file: .*truncated file"):
        list(features.iter_batches(out, 5))


def write_rows(path, n, chunk=7):
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.arange(n, dtype=np.float32)[:, None].repeat(3, 1), chunks=(chunk, 3))
        f.create_dataset("labels", data=np.arange(n, dtype=np.int32))


def test_shuffled_batches_visit_every_row_once_in_a_seeded_order(tmp_path):
    write_rows(tmp_path / "f.h5", 101)
    batches = list(features.shuffled_batches(tmp_path / "f.h5", batch_size=8, buffer_rows=30, seed=1))
    rows = np.concatenate([y for _, y in batches])
    assert sorted(rows) == list(range(101))
    assert all(len(y) == 8 for _, y in batches[:-1])
    assert all((x[:, 0] == y).all() for x, y in batches)  # features stay with their labels
    assert not (rows == np.arange(101)).all()
    again = np.concatenate([y for _, y in features.shuffled_batches(tmp_path / "f.h5", 8, 30, seed=1)])
    other = np.concatenate([y for _, y in features.shuffled_batches(tmp_path / "f.h5", 8, 30, seed=2)])
    assert (again == rows).all() and not (other == rows).all()


def test_iter_batches_in_order_and_bad_files(tmp_path):
    write_rows(tmp_path / "f.h5", 10)
    assert [list(y) for _, y in features.iter_batches(tmp_path / "f.h5", 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(features.FeatureFileError, match="missing.h5: cannot open"):
        features.open_features(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(features.FeatureFileError, match="other.h5: not a feature file"):
        features.open_features(tmp_path / "other.h5")
