"""The bn_stats stage's file: per layer, the float64 mean and variance of every unit that gets BN, byte-reproducible
HDF5 read back with a check that every statistic is usable."""

from __future__ import annotations

import os

import h5py
import numpy as np

from vggbn import VggbnError
from vggbn.cluster.distribute import chief_only
from vggbn.storage.atomic import atomic_path


class StatisticsError(VggbnError):
    pass


def _ordered_untimed(plist_class):
    """An HDF5 creation property list keeping the creation order of links and attributes (h5py's `track_order`)
    but no timestamps, which HDF5 otherwise writes into such groups: same statistics, same bytes."""
    plist = h5py.h5p.create(plist_class)
    order = h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED
    plist.set_link_creation_order(order)
    plist.set_attr_creation_order(order)
    plist.set_obj_track_times(False)
    return plist


@chief_only
def save_statistics(path, moments: dict, attrs: dict | None = None) -> None:
    """One HDF5 group per layer, in layer order: float64 `mean` and `variance`, and the row count as an attribute.

    The file is byte-reproducible, so rerunning the stage with the same result reruns nothing downstream.
    Under a multi-worker strategy only the chief writes.
    """
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
    with h5py.File(path, "r") as file:
        stats = {name: (group["mean"][:], group["variance"][:]) for name, group in file.items()}
        attrs = {key: (value.decode() if isinstance(value, bytes) else value) for key, value in file.attrs.items()}
    for name, (mean, variance) in stats.items():
        bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(variance) & (variance >= 0)))
        if len(bad):
            shown = ", ".join(map(str, bad[:8])) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
            raise StatisticsError(f"{path}: {name}: units {shown} have a non-finite mean or variance: rerun "
                                  "`dvc repro -f bn_stats`")
    return stats, attrs




def row_counts(path) -> dict[str, int]:
    """{layer name: the number of values its statistics pool}, in the file's layer order (merging needs it)."""
    with h5py.File(path, "r") as file:
        return {name: int(group.attrs["count"]) for name, group in file.items()}
