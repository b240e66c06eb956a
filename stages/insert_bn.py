"""Stage insert_bn: rebuild the classifier's parts with identity-calibrated BatchNormalization and prove that
they compute exactly what the original did."""

from vggbn.runner import stage


def main():
    args = stage.arguments(__doc__, model="the pretrained classifier (.keras)",
                           stats="statistics from bn_stats (HDF5)",
                           valid="valid features (HDF5) to check the identity on",
                           sample="folder with the valid.tsv manifest (end-to-end check)",
                           dense_out="the dense part with BN (.keras)",
                           conv_out="the conv part, with BN when bn.layers asks (.keras)",
                           metrics="JSON: max_abs_diff, loss/accuracy before and after",
                           plot="CSV: top-class probability before and after, per sample")
    params = stage.params()

    from vggbn.numerics.calibration import run_insert_bn
    from vggbn.storage.files import write_result
    from vggbn.numerics.images import ImageInput

    result = run_insert_bn(model_path=args.model, stats_path=args.stats, valid_path=args.valid,
                           sample_dir=args.sample, inputs=ImageInput.from_params(params), dense_out=args.dense_out,
                           conv_out=args.conv_out, batch_size=params.bn.batch_size)
    write_result(result, metrics=args.metrics, plots={"identity": args.plot})
    return result


if __name__ == "__main__":
    stage.run(main, runs_model=True)
