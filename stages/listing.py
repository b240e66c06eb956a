"""Stage listing: list the image folder (sorted path, size, kind), cheaply, on every `dvc repro`.

The folder itself is no DVC dependency; this listing stands in for it and stays byte-identical while the folder is
unchanged, so nothing downstream reruns.
"""

import argparse

from vggbn.runner import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="listing to write (TSV: path, size, kind)")
    parser.add_argument("--folder", choices=("data", "transfer"), default="data",
                        help="which folder: data.root (the pipeline's images) or transfer.root (the new task's)")
    args = parser.parse_args()
    params = stage.params()

    from vggbn.storage.listing import run_listing

    if args.folder == "data":
        return run_listing(root=params.data.root, out=args.out, valid_labels=params.data.valid_labels)
    return run_listing(root=params.transfer.root, out=args.out)


if __name__ == "__main__":
    stage.run(main)
