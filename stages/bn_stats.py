"""Stage bn_stats: per-unit mean and variance of each hidden dense layer's output over the train features."""

import argparse

from vggbn import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the pretrained classifier (.keras)")
    parser.add_argument("--train", required=True, help="train features (HDF5)")
    parser.add_argument("--out", required=True, help="statistics to write (HDF5, one group per layer)")
    parser.add_argument("--metrics", required=True, help="JSON with units and dead units per layer")
    args = parser.parse_args()
    bn_params = stage.params().bn

    from vggbn.atomic import write_json
    from vggbn.surgery import measure_file

    summary = measure_file(model_path=args.model, train_path=args.train, out_path=args.out,
                           batch_size=bn_params.batch_size)
    write_json(args.metrics, summary)


if __name__ == "__main__":
    stage.run(main)
