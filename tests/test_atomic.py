"""Temporary names: a kill leaves at most `.partial-<pid>-*` files, and the next write into their folder removes
them; what a live writer is writing is left alone."""

import os

from vggbn.storage.atomic import atomic_path, partial_path, remove_stale_partials, staging_folder
from vggbn.numerics.models import build_demo_classifier, save_model

DEAD = 4_194_304 + 4321  # above Linux's largest pid: no such process


def test_a_write_removes_its_own_leftovers_and_those_of_dead_writers(tmp_path):
    own = tmp_path / f".partial-{os.getppid()}-model.keras"  # the same output: DVC lets one writer at a time
    staged = tmp_path / f".partial-{DEAD}-staging-other.keras"  # Keras' staging of another output, writer gone
    staged.mkdir()
    (staged / "other.keras").write_bytes(b"half")
    dead = tmp_path / f".partial-{DEAD}-other.json"
    live = tmp_path / f".partial-{os.getppid()}-other.json"  # another output whose writer still runs
    for path in (own, dead, live):
        path.write_bytes(b"half")
    with atomic_path(tmp_path / "model.keras") as tmp:
        tmp.write_bytes(b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "model.keras"]


def test_work_folders_are_swept_whole(tmp_path):
    (tmp_path / f".partial-{os.getppid()}-chunk-000001-abc.npy").write_bytes(b"half")
    (tmp_path / "chunk-000000-abc.npy").write_bytes(b"whole")
    remove_stale_partials(tmp_path, everything=True)
    assert [p.name for p in tmp_path.iterdir()] == ["chunk-000000-abc.npy"]


def test_a_model_save_stages_inside_a_partial_folder_and_leaves_nothing_else(tmp_path, monkeypatch):
    import keras

    seen = []
    real_save = keras.Model.save

    def spy(model, path, *args, **kwargs):
        seen.append(path)
        return real_save(model, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", spy)
    save_model(build_demo_classifier(input_size=32, num_classes=3, filters=(8,), dense_units=8), tmp_path / "m.keras")
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]
    # Keras writes inside a folder named as a temporary of the output (it may add a temporary file of its own there)
    assert seen[0].parent.name == partial_path(tmp_path / "m.keras", "staging-").name


def test_staging_folder_is_removed_even_on_error(tmp_path):
    try:
        with staging_folder(tmp_path / "x.keras") as folder:
            (folder / "x.keras").write_bytes(b"half")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert list(tmp_path.iterdir()) == []
