"""Streaming per-unit mean and variance that merge across batches and shards (Chan, Golub and LeVeque 1979).

Accumulators are float64: a float32 running sum of activations with a large offset loses the digits that the
variance lives in. numpy only, no TensorFlow.
"""

from __future__ import annotations

import os

import numpy as np


class Moments:
    """Count, mean and sum of squared deviations (M2) of each column, updated batch by batch."""

    def __init__(self, width: int):
        self.count = 0
        self.mean = np.zeros(width, dtype=np.float64)
        self.m2 = np.zeros(width, dtype=np.float64)

    @property
    def width(self) -> int:
        return self.mean.shape[0]

    def update(self, batch) -> "Moments":
        """Add the rows of `batch`; any leading axes (batch, height, width) are pooled per last-axis unit."""
        rows = np.asarray(batch, dtype=np.float64).reshape(-1, self.width)
        if rows.shape[0]:
            mean = rows.mean(axis=0)
            m2 = np.square(rows - mean).sum(axis=0)
            self._combine(rows.shape[0], mean, m2)
        return self

    def merge(self, other: "Moments") -> "Moments":
        """Fold in moments computed elsewhere (another shard or worker)."""
        if other.width != self.width:
            raise ValueError(f"cannot merge moments of width {other.width} into width {self.width}")
        if other.count:
            self._combine(other.count, other.mean, other.m2)
        return self

    def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + np.square(delta) * (n_a * n_b / n)
        self.count = n

    @property
    def variance(self) -> np.ndarray:
        """Population variance (ddof=0), what BatchNormalization normalizes by."""
        if not self.count:
            raise ValueError("no rows seen: the variance of an empty sample is undefined")
        return self.m2 / self.count


def _ordered_untimed(plist_class):
    """An HDF5 creation property list keeping the creation order of links and attributes (h5py's `track_order`)
    but no timestamps, which HDF5 otherwise writes into such groups: same statistics, same bytes."""
    import h5py

    plist = h5py.h5p.create(plist_class)
    order = h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED
    plist.set_link_creation_order(order)
    plist.set_attr_creation_order(order)
    plist.set_obj_track_times(False)
    return plist


def save_statistics(path, moments: dict[str, Moments], attrs: dict | None = None) -> None:
    """One HDF5 group per layer, in layer order: float64 `mean` and `variance`, and the row count as an attribute.

    The file is byte-reproducible, so rerunning the stage with the same result reruns nothing downstream.
    """
    import h5py

    from vggbn.atomic import atomic_path

    with atomic_path(path) as tmp, h5py.File(h5py.h5f.create(os.fsencode(tmp), h5py.h5f.ACC_TRUNC,
                                                            fcpl=_ordered_untimed(h5py.h5p.FILE_CREATE))) as file:
        for name, m in moments.items():
            group = h5py.Group(h5py.h5g.create(file.id, name.encode(), gcpl=_ordered_untimed(h5py.h5p.GROUP_CREATE)))
            group.create_dataset("mean", data=m.mean)
            group.create_dataset("variance", data=m.variance)
            group.attrs["count"] = m.count
        for key, value in (attrs or {}).items():
            file.attrs[key] = value


def load_statistics(path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """({layer name: (mean, variance)} in the file's layer order, the file's attributes), as saved."""
    import h5py

    with h5py.File(path, "r") as file:
        stats = {name: (group["mean"][:], group["variance"][:]) for name, group in file.items()}
        return stats, {key: (value.decode() if isinstance(value, bytes) else value) for key, value in file.attrs.items()}
