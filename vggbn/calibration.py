"""The bn_stats and insert_bn stages: measure the statistics of every layer that gets BN, save them, insert
calibrated BN and prove the identity. The numerics are `surgery`'s and `moments`'; this module reads and writes
the files around them.
"""

from __future__ import annotations

import os

import h5py
import keras
import numpy as np

from vggbn import VggbnError, console, distribute, features, models, surgery
from vggbn.atomic import atomic_path
from vggbn.files import StageResult, Table
from vggbn.images import CHECK_IMAGES, ImageInput
from vggbn.manifest import read_split
from vggbn.moments import Moments

IDENTITY_POINTS = 5000  # enough to see a straight line; a plot of 50,000 points is slow to draw


def _ordered_untimed(plist_class):
    """An HDF5 creation property list keeping the creation order of links and attributes (h5py's `track_order`)
    but no timestamps, which HDF5 otherwise writes into such groups: same statistics, same bytes."""
    plist = h5py.h5p.create(plist_class)
    order = h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED
    plist.set_link_creation_order(order)
    plist.set_attr_creation_order(order)
    plist.set_obj_track_times(False)
    return plist


def save_statistics(path, moments: dict[str, Moments], attrs: dict | None = None) -> None:
    """One HDF5 group per layer, in layer order: float64 `mean` and `variance`, and the row count as an attribute.

    The file is byte-reproducible, so rerunning the stage with the same result reruns nothing downstream.
    Under a multi-worker strategy only the chief writes.
    """
    if not distribute.is_chief():
        return
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


def _row_count(feature_path) -> int:
    with features.open_features(feature_path) as file:
        return file["features"].shape[0]


def calibration_tables(moments: dict[str, Moments]) -> tuple[dict, dict[str, Table]]:
    """Per layer: a summary (units, dead units: variance zero, e.g. never firing after the ReLU, rows measured)
    and the calibration plot's table (unit, mean, std, dead)."""
    summary, tables = {}, {}
    for name, m in moments.items():
        dead = m.variance == 0
        summary[name] = {"units": m.width, "dead_units": int(dead.sum()), "rows": m.count}
        tables[name] = Table(("unit", "mean", "std", "dead"),
                             [(unit, float(mu), float(sd), int(d))
                              for unit, (mu, sd, d) in enumerate(zip(m.mean, np.sqrt(m.variance), dead))])
    return summary, tables


class StatisticsError(VggbnError):
    pass


def _non_finite(error: surgery.NonFiniteActivations, where: str) -> StatisticsError:
    return StatisticsError(f"{error.layer}: units {error.shown} are not finite on {where}, so their statistics "
                           "would not be: a broken model file (NaN or huge weights) or damaged features")


def conv_moments(conv: keras.Model, inputs: ImageInput, paths: list[str], names: list[str],
                 position: str = "after_activation") -> dict[str, Moments]:
    """`surgery.measure` of the conv part's layers `names` over the images `paths` (relative to `inputs.root`).
    Under a multi-worker strategy each worker decodes only its own rows of each batch (`distribute.own_images`)
    and only moments travel."""
    shared = distribute.multi_worker()
    if shared:
        totals = [len(paths[i:i + inputs.batch_size]) for i in range(0, len(paths), inputs.batch_size)]
        images = zip(distribute.own_images(inputs, paths, models.input_size(conv)), totals)
    else:
        images = inputs.dataset(paths, models.input_size(conv))
    batches = console.tracked(images, len(paths), "statistics over train images", "img",
                              size=(lambda pair: pair[1]) if shared else len)
    return surgery.measure(conv, batches, names, position, shared=shared)


def run_bn_stats(*, model_path, train_path, sample_dir, inputs: ImageInput, out_path, layers: str, position: str,
                 batch_size: int, conv_images: int | None) -> StageResult:
    """The bn_stats stage: moments of every BN target, saved to `out_path`; units and dead units per layer, and a
    calibration table per layer (plot `calibration`).

    Targets in the dense part are measured on the cached train features (`batch_size` rows at a time); targets in
    the conv part (conv BN) need the images, streamed through the conv part.
    """
    model = models.load_model_file(model_path)
    conv, dense = models.split(model, features.feature_cut(train_path))
    moments = {}
    if surgery.targets(dense, layers):
        batches = console.tracked((x for x, _ in features.iter_batches(train_path, batch_size)),
                                  _row_count(train_path), "statistics over train features", "row", size=len)
        try:
            moments.update(surgery.measure(dense, batches, surgery.targets(dense, layers), position))
        except surgery.NonFiniteActivations as error:
            row = error.batch * batch_size + error.row
            with features.open_features(train_path) as file:
                image = file["paths"].asstr()[row] if "paths" in file else "?"
            raise _non_finite(error, f"row {row} of {train_path} (image {image})") from None
    if surgery.targets(conv, layers):
        paths = read_split(sample_dir, "train").paths[:conv_images]
        try:
            moments.update(conv_moments(conv, inputs, paths, surgery.targets(conv, layers), position))
        except surgery.NonFiniteActivations as error:
            image = inputs.files(paths)[error.batch * inputs.batch_size + error.row]
            raise _non_finite(error, f"image {image}") from None
    moments = {name: moments[name] for name in surgery.targets(model, layers)}  # model order
    save_statistics(out_path, moments, {"position": position, "layers": layers})
    summary, tables = calibration_tables(moments)
    return StageResult({**summary, **distribute.describe()}, {"calibration": tables})


def run_insert_bn(*, model_path, stats_path, valid_path, sample_dir, inputs: ImageInput, dense_out, conv_out,
                  batch_size: int) -> StageResult:
    """The insert_bn stage: the calibrated dense part and conv part, saved; the identity report, and the identity
    plot's table (plot `identity`: top-class probability before and after, per valid sample).

    `max_abs_diff` covers the dense part over all valid features and, with conv BN, the whole model over up to
    `CHECK_IMAGES` valid images (`end_to_end_*` keys); `*_before`/`*_after` are the dense part's loss and
    accuracy on the valid features without and with BN.
    """
    model = models.load_model_file(model_path)
    conv, dense = models.split(model, features.feature_cut(valid_path))
    stats, attrs = load_statistics(stats_path)
    dense_names, conv_names = {l.name for l in dense.layers[1:]}, {l.name for l in conv.layers[1:]}
    dense_bn = surgery.insert_bn(dense, {k: v for k, v in stats.items() if k in dense_names}, attrs["position"])
    conv_bn = surgery.insert_bn(conv, {k: v for k, v in stats.items() if k in conv_names}, attrs["position"])
    batches = console.tracked(features.iter_batches(valid_path, batch_size), _row_count(valid_path),
                              "identity check over valid features", "row", size=lambda batch: len(batch[1]))
    report, points = surgery.compare(dense, dense_bn, batches, IDENTITY_POINTS)
    if any(name in conv_names for name in stats):
        manifest = read_split(sample_dir, "valid")
        paths = manifest.paths[:CHECK_IMAGES]
        dataset = inputs.dataset(paths, models.input_size(model), labels=manifest.labels[:CHECK_IMAGES])
        batches = console.tracked(dataset, len(paths), "identity check end to end", "img",
                                  size=lambda batch: len(batch[1]))
        whole, _ = surgery.compare(model, models.join(conv_bn, dense_bn, name="whole_bn"), batches)
        report.update({f"end_to_end_{key}": whole[key] for key in ("max_abs_diff", "max_abs_diff_logits", "samples")})
        report["max_abs_diff"] = max(report["max_abs_diff"], whole["max_abs_diff"])
        report["max_abs_diff_logits"] = max(report["max_abs_diff_logits"], whole["max_abs_diff_logits"])
    models.save_model(dense_bn, dense_out)
    models.save_model(conv_bn, conv_out)
    report["bn_layers"] = sum(isinstance(l, keras.layers.BatchNormalization) for l in dense_bn.layers + conv_bn.layers)
    return StageResult({**report, **distribute.describe()}, {"identity": Table(("before", "after"), points)})
