"""Stage listing: list the image folder (sorted path, size, kind), cheaply, on every `dvc repro`.

The folder itself is no DVC dependency; this listing stands in for it and stays byte-identical while the folder is
unchanged, so nothing downstream reruns.
"""

import argparse

from vggbn import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="listing to write (TSV: path, size, kind)")
    args = parser.parse_args()
    data_params = stage.params().data

    from vggbn.listing import make_listing

    make_listing(root=data_params.root, out=args.out, valid_labels=data_params.valid_labels)


if __name__ == "__main__":
    stage.run(main)
