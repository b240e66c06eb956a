"""Stage demo_data: write the demo image folder (ImageNet layout) from scikit-learn's bundled digits."""

import argparse

from vggbn import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="image folder to write: <out>/{train,valid}/<digit>/*.png")
    parser.add_argument("--metrics", required=True, help="JSON with the image counts")
    args = parser.parse_args()
    demo_params = stage.params().demo

    from vggbn.atomic import write_json
    from vggbn.demo import write_digits_folder

    counts = write_digits_folder(args.out, size=demo_params.size, valid_fraction=demo_params.valid_fraction,
                                 seed=demo_params.seed)
    write_json(args.metrics, counts)


if __name__ == "__main__":
    stage.run(main)
