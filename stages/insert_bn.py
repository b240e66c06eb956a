"""Stage insert_bn: rebuild the classifier's parts with identity-calibrated BatchNormalization and prove that
they compute exactly what the original did."""

import argparse

from vggbn import stage

IDENTITY_POINTS = 5000  # enough to see a straight line; a plot of 50,000 points is slow to draw


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the pretrained classifier (.keras)")
    parser.add_argument("--stats", required=True, help="statistics from bn_stats (HDF5)")
    parser.add_argument("--valid", required=True, help="valid features (HDF5) to check the identity on")
    parser.add_argument("--sample", required=True, help="folder with the valid.tsv manifest (end-to-end check)")
    parser.add_argument("--dense-out", required=True, help="the dense part with BN (.keras)")
    parser.add_argument("--conv-out", required=True, help="the conv part, with BN when bn.layers asks (.keras)")
    parser.add_argument("--metrics", required=True, help="JSON: max_abs_diff, loss/accuracy before and after")
    parser.add_argument("--plot", required=True, help="CSV: top-class probability before and after, per sample")
    args = parser.parse_args()
    params = stage.params()

    from vggbn.atomic import write_csv, write_json
    from vggbn.surgery import insert_bn_files

    report = insert_bn_files(model_path=args.model, stats_path=args.stats, valid_path=args.valid,
                             sample_dir=args.sample, root=params.data.root, dense_out=args.dense_out,
                             conv_out=args.conv_out, batch_size=params.bn.batch_size,
                             image_batch_size=params.features.batch_size, resize=params.features.resize,
                             preprocess=params.model.preprocess_mode, points=(points := []))
    write_csv(args.plot, ["before", "after"], points[:IDENTITY_POINTS])
    write_json(args.metrics, report)


if __name__ == "__main__":
    stage.run(main)
