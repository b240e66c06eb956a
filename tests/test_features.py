import h5py
import numpy as np
import pytest

from vggbn import features

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


def build(out, work, paths, labels, md5s, extractor, recipe=RECIPE):
    return features.build_feature_file(out, paths=paths, labels=labels, md5s=md5s, extract=extractor,
                                       row_shape=(2, 2, 3), dtype="float32", work_dir=work, feature_recipe=recipe,
                                       chunk_rows=5, attrs={"cut": "block2_pool"})


def test_one_go_writes_features_labels_paths(tmp_path):
    paths, labels, md5s = manifest(23)
    stats = build(tmp_path / "f.h5", tmp_path / "work", paths, labels, md5s, Extractor(paths))
    assert stats == {"computed": 23, "reused": 0, "resumed": 0}
    with h5py.File(tmp_path / "f.h5") as f:
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


def test_changed_manifest_reuses_unchanged_rows_from_the_previous_run(tmp_path):
    paths, labels, md5s = manifest(30)
    out, work = tmp_path / "f.h5", tmp_path / "work"
    build(out, work, paths, labels, md5s, Extractor(paths))
    out.unlink()  # dvc repro deletes declared outputs before running the stage
    new_paths = paths[:28] + ["train/c0/new a.png", "train/c1/new b.png"]
    new_md5s = md5s[:27] + ["changed-content"] + ["md5-a", "md5-b"]
    second = Extractor(new_paths)
    stats = build(out, work, new_paths, labels, new_md5s, second)
    assert stats == {"computed": 3, "reused": 27, "resumed": 0}
    assert sorted(second.rows_computed) == [27, 28, 29]
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["features"][:], fake_features(new_paths))


def test_no_reuse_across_recipes(tmp_path):
    paths, labels, md5s = manifest(10)
    work = tmp_path / "work"
    build(tmp_path / "a.h5", work, paths, labels, md5s, Extractor(paths))
    stats = build(tmp_path / "b.h5", work, paths, labels, md5s, Extractor(paths), recipe={**RECIPE, "cut": "x"})
    assert stats["computed"] == 10


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
