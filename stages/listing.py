"""Stage listing: list the image folder data.root (sorted path, size, kind), cheaply, on every `dvc repro`.

The folder itself is no DVC dependency; this listing stands in for it and stays byte-identical while the folder is
unchanged, so nothing downstream reruns.
"""

from vggbn.runner import stage


def run(paths, params):
    """Scan `data.root` into the listing `--out`; the root and the counts of what was listed."""
    from vggbn.storage.listing import list_folder
    from vggbn.storage.results import StageResult

    return StageResult(list_folder(root=params.data.root, out=paths.out, valid_labels=params.data.valid_labels))


if __name__ == "__main__":
    stage.main(__doc__, run, out="listing to write (TSV: path, size, kind)")
