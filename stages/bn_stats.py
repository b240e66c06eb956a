"""Stage bn_stats: per-unit mean and variance of every layer that gets BN (bn.layers), in one streaming pass:
dense-part layers over the cached train features, conv-part layers (conv BN) over the train images."""

from vggbn.runner import stage


def main():
    args = stage.arguments(__doc__, model="the pretrained classifier (.keras)", train="train features (HDF5)",
                           sample="folder with the train.tsv manifest (for conv BN)",
                           out="statistics to write (HDF5, one group per layer)",
                           metrics="JSON with units and dead units per layer",
                           plots="folder for the calibration plot: <layer>.csv per layer")
    params = stage.params()

    from vggbn.numerics.calibration import run_bn_stats
    from vggbn.storage.files import write_result
    from vggbn.numerics.images import ImageInput

    result = run_bn_stats(model_path=args.model, train_path=args.train, sample_dir=args.sample,
                          inputs=ImageInput.from_params(params), out_path=args.out, layers=params.bn.layers,
                          position=params.bn.position, batch_size=params.bn.batch_size,
                          conv_images=params.bn.conv_images)
    write_result(result, metrics=args.metrics, plots={"calibration": args.plots})
    return result


if __name__ == "__main__":
    stage.run(main, runs_model=True)
