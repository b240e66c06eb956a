"""Stage insert_bn: rebuild the dense part with identity-calibrated BatchNormalization and prove it is exact."""

import argparse

from vggbn import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the pretrained classifier (.keras)")
    parser.add_argument("--stats", required=True, help="statistics from bn_stats (HDF5)")
    parser.add_argument("--valid", required=True, help="valid features (HDF5) to check the identity on")
    parser.add_argument("--out", required=True, help="the dense part with BN (.keras)")
    parser.add_argument("--metrics", required=True, help="JSON: max_abs_diff, loss/accuracy before and after")
    args = parser.parse_args()
    bn_params = stage.params().bn

    from vggbn.atomic import write_json
    from vggbn.surgery import insert_bn_files

    report = insert_bn_files(model_path=args.model, stats_path=args.stats, valid_path=args.valid,
                             out_path=args.out, batch_size=bn_params.batch_size)
    write_json(args.metrics, report)


if __name__ == "__main__":
    stage.run(main)
