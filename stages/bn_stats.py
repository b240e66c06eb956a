"""Stage bn_stats: per-unit mean and variance of every layer that gets BN (bn.layers), in one streaming pass:
dense-part layers over the cached train features, conv-part layers (conv BN) over the train images."""

import argparse

from vggbn import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the pretrained classifier (.keras)")
    parser.add_argument("--train", required=True, help="train features (HDF5)")
    parser.add_argument("--sample", required=True, help="folder with the train.tsv manifest (for conv BN)")
    parser.add_argument("--out", required=True, help="statistics to write (HDF5, one group per layer)")
    parser.add_argument("--metrics", required=True, help="JSON with units and dead units per layer")
    parser.add_argument("--plots", required=True, help="folder for the calibration plot: <layer>.csv per layer")
    args = parser.parse_args()
    params = stage.params()

    from vggbn.atomic import atomic_path, write_csv, write_json
    from vggbn.surgery import calibration_table, measure_files

    moments = measure_files(model_path=args.model, train_path=args.train, sample_dir=args.sample,
                            root=params.data.root, out_path=args.out, layers=params.bn.layers,
                            position=params.bn.position, batch_size=params.bn.batch_size,
                            image_batch_size=params.features.batch_size, resize=params.features.resize,
                            preprocess=params.model.preprocess_mode, conv_images=params.bn.conv_images)
    summary, tables = calibration_table(moments)
    with atomic_path(args.plots) as folder:
        folder.mkdir()
        for layer, rows in tables.items():
            write_csv(folder / f"{layer}.csv", ["unit", "mean", "std", "dead"], rows)
    write_json(args.metrics, summary)


if __name__ == "__main__":
    stage.run(main)
