"""Stage bn_stats: the mean and variance of every unit that gets BN, in one streaming float64 pass: hidden dense
units over the cached train features, conv channels (with `bn.layers: conv` or `all`) over the train images."""

from vggbn.runner import stage


def calibration_tables(moments: dict) -> tuple[dict, dict]:
    """Per layer: a summary (units, dead units: variance zero, e.g. never firing after the ReLU, rows measured)
    and the calibration plot's table (unit, mean, std, dead)."""
    import numpy as np

    from vggbn.storage.tables import PlotTable

    summary, tables = {}, {}
    for name, m in moments.items():
        dead = m.variance == 0
        summary[name] = {"units": m.width, "dead_units": int(dead.sum()), "rows": m.count}
        tables[name] = PlotTable(("unit", "mean", "std", "dead"),
                                 [(unit, float(mu), float(sd), int(d))
                                  for unit, (mu, sd, d) in enumerate(zip(m.mean, np.sqrt(m.variance), dead))])
    return summary, tables


def non_finite_error(error, where: str):
    """The one-line error of a layer whose activations are not finite (`surgery.NonFiniteActivations`) on `where`."""
    from vggbn.storage.statistics import StatisticsError

    return StatisticsError(f"{error.layer}: units {error.shown} are not finite on {where}, so their statistics "
                           "would not be: a broken model file (NaN or huge weights) or damaged features")


def run(paths, params):
    """Moments of every BN target, saved to `--out`; units and dead units per layer, and a calibration table per
    layer (plot `calibration`).

    Targets in the dense part are measured on the cached train features (`bn.batch_size` rows at a time); targets
    in the conv part (conv BN) need the images, streamed through the conv part.
    """
    from vggbn.numerics import models, surgery
    from vggbn.cluster import distribute
    from vggbn.numerics.images import ImageInput
    from vggbn import console
    from vggbn.storage import features
    from vggbn.storage.manifest import read_split
    from vggbn.storage.results import StageResult
    from vggbn.storage.statistics import save_statistics

    inputs = ImageInput.from_params(params)
    layers, position, batch_size, conv_images = (params.bn.layers, params.bn.position, params.bn.batch_size,
                                                 params.bn.conv_images)
    model = models.load_model_file(paths.model)
    conv, dense = models.split(model, features.feature_cut(paths.train))
    moments = {}
    if surgery.targets(dense, layers):
        shared = distribute.multi_worker()  # each worker reads only its own rows of each batch; moments travel
        batches = (((x, count) for x, _, count in features.iter_shares(paths.train, batch_size, distribute.my_share))
                   if shared else (x for x, _ in features.iter_batches(paths.train, batch_size)))
        batches = console.tracked(batches, features.row_count(paths.train), "statistics over train features", "row",
                                  size=(lambda pair: pair[1]) if shared else len)
        try:
            moments.update(surgery.measure(dense, batches, surgery.targets(dense, layers), position, shared=shared))
        except surgery.NonFiniteActivations as error:
            row = error.batch * batch_size + error.row
            with features.open_features(paths.train) as file:
                image = file["paths"].asstr()[row] if "paths" in file else "?"
            raise non_finite_error(error, f"row {row} of {paths.train} (image {image})") from None
    if surgery.targets(conv, layers):
        images = read_split(paths.sample, "train").paths[:conv_images]

        def track(batches, images, size):
            return console.tracked(batches, images, "statistics over train images", "img", size=size)
        try:  # under a multi-worker strategy each worker decodes only its own rows of each batch
            moments.update(surgery.measure_images(conv, inputs, images, surgery.targets(conv, layers), position,
                                                  track=track))
        except surgery.NonFiniteActivations as error:
            image = inputs.files(images)[error.batch * inputs.batch_size + error.row]
            raise non_finite_error(error, f"image {image}") from None
    moments = {name: moments[name] for name in surgery.targets(model, layers)}  # model order
    save_statistics(paths.out, moments, {"position": position, "layers": layers})
    summary, tables = calibration_tables(moments)
    return StageResult({**summary, **distribute.describe()}, {"calibration": tables})


if __name__ == "__main__":
    stage.main(__doc__, run, runs_model=True, model="the pretrained classifier (.keras)",
               train="train features (HDF5)", sample="folder with the train.tsv manifest (for conv BN)",
               out="statistics to write (HDF5, one group per layer)", metrics="JSON with units and dead units per layer",
               calibration="folder for the calibration plot: <layer>.csv per layer")
