"""Stage demo_data: write the demo's image folders (ImageNet layout) from scikit-learn's bundled digits: the
demo classifier's digits, and the held-back digits as a transfer task."""

import argparse

from vggbn import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="image folder to write: <out>/{train,valid}/<digit>/*.png")
    parser.add_argument("--transfer-out", required=True, help="image folder of the held-back digits")
    parser.add_argument("--metrics", required=True, help="JSON with the image counts")
    args = parser.parse_args()
    demo_params = stage.params().demo

    from vggbn.atomic import write_json
    from vggbn.demo import write_digits_folders

    counts = write_digits_folders(args.out, args.transfer_out, size=demo_params.size,
                                  valid_fraction=demo_params.valid_fraction, seed=demo_params.seed,
                                  classes=demo_params.classes, transfer_train=demo_params.transfer_train)
    write_json(args.metrics, counts)


if __name__ == "__main__":
    stage.run(main)
