import numpy as np
import pytest

from vggbn.storage.statistics import load_statistics, save_statistics
from vggbn.numerics.moments import Moments


def test_matches_numpy_over_uneven_batches(rng):
    data = rng.normal(3.0, 2.0, size=(1000, 7))
    moments = Moments(7)
    for start, stop in [(0, 1), (1, 64), (64, 65), (65, 700), (700, 1000)]:
        moments.update(data[start:stop])
    assert moments.count == 1000
    np.testing.assert_allclose(moments.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(moments.variance, data.var(axis=0), rtol=1e-10)


def test_large_offset_keeps_the_digits_a_float32_sum_loses(rng):
    # Activations around 1e4 with spread 1e-2: a naive float32 E[x^2] - E[x]^2 returns noise or negatives.
    data = (1e4 + rng.normal(0, 1e-2, size=(20000, 3))).astype(np.float32)
    naive = (data.astype(np.float32) ** 2).mean(axis=0) - data.mean(axis=0, dtype=np.float32) ** 2
    moments = Moments(3)
    for start in range(0, len(data), 256):
        moments.update(data[start:start + 256])
    expected = data.astype(np.float64).var(axis=0)
    np.testing.assert_allclose(moments.variance, expected, rtol=1e-6)
    assert np.abs(naive - expected).max() > 10 * expected.max()  # the failure this guards against is real


def test_merge_of_shards_equals_one_pass(rng):
    data = rng.normal(size=(300, 4)) * [1, 10, 100, 1000] + [0, 1, -5, 7]
    whole = Moments(4).update(data)
    shards = [Moments(4).update(part) for part in np.array_split(data, 5)]
    merged = Moments(4)
    for shard in shards:
        merged.merge(shard)
    merged.merge(Moments(4))  # an empty shard changes nothing
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.variance, whole.variance, rtol=1e-12)


def test_conv_maps_pool_batch_height_width_per_channel(rng):
    maps = rng.normal(size=(6, 5, 5, 3)) + [1, 2, 3]
    moments = Moments(3).update(maps)
    np.testing.assert_allclose(moments.mean, maps.mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(moments.variance, maps.var(axis=(0, 1, 2)))


def test_empty_and_mismatched_are_errors():
    with pytest.raises(ValueError, match="empty"):
        _ = Moments(2).variance
    with pytest.raises(ValueError, match="width"):
        Moments(2).merge(Moments(3))


def test_statistics_round_trip(tmp_path, rng):
    moments = {"fc2": Moments(3).update(rng.normal(size=(10, 3))), "fc1": Moments(2).update(rng.normal(size=(10, 2)))}
    save_statistics(tmp_path / "stats.h5", moments, {"position": "after_activation"})
    loaded, attrs = load_statistics(tmp_path / "stats.h5")
    assert attrs == {"position": "after_activation"}
    assert list(loaded) == ["fc2", "fc1"]  # layer order kept
    np.testing.assert_array_equal(loaded["fc1"][1], moments["fc1"].variance)
