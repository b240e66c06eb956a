"""The training feed (`vggbn.storage.feed`): `features.shuffled_batches`' order bit for bit, rows read straight
into each batch, a worker's share of every global batch, damaged files named."""

import h5py
import numpy as np
import pytest

from vggbn.storage import feed, features


def write_rows(path, n, *, chunk=7, dtype=np.float32, row_shape=(3,), **options):
    """Row i holds i + j / 8 in element j; label i."""
    values = (np.arange(n)[:, None] + np.arange(int(np.prod(row_shape)))[None, :] / 8).astype(dtype)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=values.reshape(n, *row_shape), chunks=(chunk, *row_shape), **options)
        f.create_dataset("labels", data=np.arange(n, dtype=np.int32))


@pytest.mark.parametrize("dtype, options", [(np.float32, {}), (np.float16, {}), (np.float32, {"compression": "lzf"}),
                                            (np.float32, {"chunks": None})])
@pytest.mark.parametrize("batch_size, buffer_rows", [(8, 30), (5, 3), (16, 200), (1, 1)])
def test_the_feed_gives_features_shuffled_batches_batches(tmp_path, dtype, options, batch_size, buffer_rows):
    path = tmp_path / "f.h5"
    chunks = options.pop("chunks", 7)
    if chunks is None:  # contiguous layout
        with h5py.File(path, "w") as f:
            f.create_dataset("features", data=np.arange(101 * 3, dtype=dtype).reshape(101, 3))
            f.create_dataset("labels", data=np.arange(101, dtype=np.int32))
    else:
        write_rows(path, 101, chunk=chunks, dtype=dtype, **options)
    expected = list(features.shuffled_batches(path, batch_size, buffer_rows, seed=3))
    got = list(feed.shuffled_batches(path, batch_size, buffer_rows, seed=3, threads=2))
    assert len(got) == len(expected)
    for (x, y), (ex, ey) in zip(got, expected):
        assert x.dtype == np.float32 and x.tobytes() == ex.tobytes() and (y == ey).all()
    as_stored = feed.shuffled_batches(path, batch_size, buffer_rows, seed=3, dtype=None, tensors=True)
    for (x, y), (ex, ey) in zip(as_stored, expected, strict=True):  # tensors, as the file stores the features
        assert x.dtype.as_numpy_dtype == dtype and (x.numpy().astype(np.float32) == ex).all()
        assert y.dtype.name == "int32" and (y.numpy() == ey).all()


def test_workers_together_read_each_global_batch_once(tmp_path):
    write_rows(tmp_path / "f.h5", 203, row_shape=(2, 2))
    for batch, workers in ((16, 2), (16, 3), (2, 3)):  # a batch of 2 rows over 3 workers: one share is empty
        whole = list(feed.shuffled_batches(tmp_path / "f.h5", batch, 40, seed=1))
        shares = [list(feed.shuffled_batches(tmp_path / "f.h5", batch, 40, seed=1, worker_index=i,
                                             num_workers=workers, tensors=bool(i % 2))) for i in range(workers)]
        shares = [[(np.asarray(x), np.asarray(y)) for x, y in share] for share in shares]
        for number, (x, y) in enumerate(whole):
            parts = [share[number] for share in shares]
            assert np.concatenate([p[0] for p in parts]).astype(np.float32).tobytes() == x.tobytes()
            assert (np.concatenate([p[1] for p in parts]) == y).all()
            assert [len(p[1]) for p in parts] == [len(y) * (i + 1) // workers - len(y) * i // workers
                                                  for i in range(workers)]
    with pytest.raises(ValueError, match="worker_index=2, num_workers=2"):
        next(feed.shuffled_batches(tmp_path / "f.h5", 16, 40, seed=1, worker_index=2, num_workers=2))


def test_each_batch_is_its_own_array_and_a_short_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "f.h5"
    write_rows(path, 200, chunk=10, row_shape=(64,))
    batches = list(feed.shuffled_batches(path, 8, 40, seed=0, prefetch=3))
    assert all(not np.shares_memory(a[0], b[0]) for a, b in zip(batches, batches[1:]))
    assert all((x[:, 0] == y).all() for x, y in batches)
    # A tensor's memory is its buffer's (DLPack): where each batch's tensor lives says which buffers were reused.
    kept = list(feed.shuffled_batches(path, 8, 40, seed=0, tensors=True))  # tensors kept: no buffer reused
    assert all((x.numpy()[:, 0] == y.numpy()).all() for x, y in kept)
    assert len({np.from_dlpack(x).ctypes.data for x, _ in kept}) == 25
    dropped = [(float(x[0, 0]) - float(y[0]), np.from_dlpack(x).ctypes.data)
               for x, y in feed.shuffled_batches(path, 8, 40, seed=0, tensors=True)]
    assert [difference for difference, _ in dropped] == [0.0] * 25
    # Buffers reused as each batch's tensor is dropped: at most the batches of two shuffle buffers (the one yielded,
    # the one read ahead) and the batch just handed out, of 25
    assert len({address for _, address in dropped}) <= 2 * 40 // 8 + 1
    with h5py.File(path) as f:
        end = f["features"].id.get_chunk_info(15).byte_offset
    reading = feed.shuffled_batches(path, 8, 40, seed=0)
    next(reading)
    with open(path, "r+b") as handle:  # cut short while being read (HDF5 would refuse to open it so)
        handle.truncate(end + 16)
    with pytest.raises(features.FeatureFileError, match=r"f\.h5: rows \d+-\d+ cannot be read \(the file ends early\)"):
        list(reading)


def test_buffers_of_several_sizes_are_reused_without_comparing_them():
    """A free list holding buffers of different sizes (a short last batch, a later epoch's full one): taking one
    must pick it by position; comparing numpy arrays (list.remove) raised in the transfer stage's grid."""
    import gc

    from vggbn.storage.feed import _Buffers

    buffers = _Buffers()
    small, big = buffers.take((3, 4), np.float32), buffers.take((8, 4), np.float32)
    big_address = big.ctypes.data
    del small, big
    gc.collect()
    again = buffers.take((8, 4), np.float32)  # only the second free buffer fits
    assert again.shape == (8, 4) and again.ctypes.data == big_address


@pytest.mark.parametrize("missing", [("preadv",), ("preadv", "os.preadv")])
def test_where_preadv_is_missing_the_fallbacks_give_the_same_batches_and_train_the_same_weights(
        tmp_path, monkeypatch, missing):
    """Without the C library's `preadv` (or with no C library ctypes can open), `os.preadv`; without that too (as on
    some Unixes), `os.pread`: chosen by what the system has. Forced here on Linux by pretending the calls are
    absent; the batches are the C call's byte for byte, a damaged file is the same one-line error, and fine-tuning
    ends at the same weights."""
    from test_finetune import dense_part

    from vggbn.numerics.feature_training import TrainingPlan, train_on_features

    assert feed.PREADV_NAME == "libc.preadv"  # what Linux has: the reference
    path = tmp_path / "f.h5"
    write_rows(path, 101, dtype=np.float16, row_shape=(2, 3))
    expected = [(x.tobytes(), y.tobytes()) for x, y in feed.shuffled_batches(path, 8, 30, seed=3, threads=2)]
    files = {}
    for split, rows in (("train", 40), ("valid", 12)):
        files[split] = tmp_path / f"{split}.h5"
        write_rows(files[split], rows, chunk=8, row_shape=(2, 2, 3))
        with h5py.File(files[split], "r+") as f:
            f["labels"][...] = np.arange(rows) % 3

    def trained():
        return train_on_features(dense_part(), TrainingPlan(epochs=2, batch_size=8, lr=0.01, dropout=0.5, seed=0,
                                 shuffle_buffer=16), train_path=files["train"], valid_path=files["valid"],
                                 show_progress=False).model.get_weights()
    reference = trained()

    class NoPreadv:  # a C library without the call
        pass
    if "os.preadv" in missing:
        monkeypatch.delattr("os.preadv")
    name, function = feed.choose_preadv(NoPreadv())
    assert name == ("os.pread" if "os.preadv" in missing else "os.preadv")
    monkeypatch.setattr(feed, "_preadv", function)
    got = [(x.tobytes(), y.tobytes()) for x, y in feed.shuffled_batches(path, 8, 30, seed=3, threads=2)]
    assert got == expected
    for mine, theirs in zip(trained(), reference, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    with h5py.File(path) as f:
        end = f["features"].id.get_chunk_info(8).byte_offset
    reading = feed.shuffled_batches(path, 8, 30, seed=3)
    next(reading)
    with open(path, "r+b") as handle:  # cut short while being read: the same error as the C call's
        handle.truncate(end + 4)
    with pytest.raises(features.FeatureFileError, match=r"f\.h5: rows \d+-\d+ cannot be read \(the file ends early\)"):
        list(reading)


def test_cores_falls_back_to_the_cpu_count_where_there_is_no_affinity(monkeypatch):
    import os

    from vggbn.cluster.environment import usable_cores

    assert usable_cores() == sorted(os.sched_getaffinity(0))
    monkeypatch.delattr("os.sched_getaffinity")
    assert usable_cores() == list(range(os.cpu_count()))
