"""Stage insert_bn: the dense part (and conv part) with calibrated BN inserted, and the proof that it computes what
the original did (`max_abs_diff`)."""

from vggbn.runner import stage

IDENTITY_POINTS = 5000  # enough to see a straight line; a plot of 50,000 points is slow to draw


def run(paths, params):
    """The calibrated dense part and conv part, saved; the identity report, and the identity plot's table (plot
    `identity`: top-class probability before and after, per valid sample).

    `max_abs_diff` covers the dense part over all valid features and, with conv BN, the whole model over up to
    `CHECK_IMAGES` valid images (`end_to_end_*` keys); `*_before`/`*_after` are the dense part's loss and
    accuracy on the valid features without and with BN.
    """
    import keras

    from vggbn.numerics import models, surgery
    from vggbn.cluster import distribute
    from vggbn.numerics.images import CHECK_IMAGES, ImageInput
    from vggbn import console
    from vggbn.storage import features
    from vggbn.storage.manifest import read_split
    from vggbn.storage.results import StageResult
    from vggbn.storage.statistics import load_statistics
    from vggbn.storage.tables import PlotTable

    inputs, batch_size = ImageInput.from_params(params), params.bn.batch_size
    model = models.load_model_file(paths.model)
    conv, dense = models.split(model, features.feature_cut(paths.valid))
    stats, attrs = load_statistics(paths.stats)
    dense_names, conv_names = {l.name for l in dense.layers[1:]}, {l.name for l in conv.layers[1:]}
    dense_bn = surgery.insert_bn(dense, {k: v for k, v in stats.items() if k in dense_names}, attrs["position"])
    conv_bn = surgery.insert_bn(conv, {k: v for k, v in stats.items() if k in conv_names}, attrs["position"])
    batches = console.tracked(features.iter_batches(paths.valid, batch_size), features.row_count(paths.valid),
                              "identity check over valid features", "row", size=lambda batch: len(batch[1]))
    report, points = surgery.compare(dense, dense_bn, batches, IDENTITY_POINTS)
    if any(name in conv_names for name in stats):
        manifest = read_split(paths.sample, "valid")
        images = manifest.paths[:CHECK_IMAGES]
        dataset = inputs.dataset(images, models.input_size(model), labels=manifest.labels[:CHECK_IMAGES])
        batches = console.tracked(dataset, len(images), "identity check end to end", "img",
                                  size=lambda batch: len(batch[1]))
        whole, _ = surgery.compare(model, models.join(conv_bn, dense_bn, name="whole_bn"), batches)
        report.update({f"end_to_end_{key}": whole[key] for key in ("max_abs_diff", "max_abs_diff_logits", "samples")})
        report["max_abs_diff"] = max(report["max_abs_diff"], whole["max_abs_diff"])
        report["max_abs_diff_logits"] = max(report["max_abs_diff_logits"], whole["max_abs_diff_logits"])
    models.save_model(dense_bn, paths.dense_out)
    models.save_model(conv_bn, paths.conv_out)
    report["bn_layers"] = sum(isinstance(l, keras.layers.BatchNormalization) for l in dense_bn.layers + conv_bn.layers)
    return StageResult({**report, **distribute.describe()}, {"identity": PlotTable(("before", "after"), points)})


if __name__ == "__main__":
    stage.main(__doc__, run, runs_model=True, model="the pretrained classifier (.keras)",
               stats="statistics from bn_stats (HDF5)", valid="valid features (HDF5) to check the identity on",
               sample="folder with the valid.tsv manifest (end-to-end check)",
               dense_out="the dense part with BN (.keras)",
               conv_out="the conv part, with BN when bn.layers asks (.keras)",
               metrics="JSON: max_abs_diff, loss/accuracy before and after",
               identity="CSV: top-class probability before and after, per sample")
