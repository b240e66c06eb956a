"""Stage transfer_listing: list the new task's image folder transfer.root (sorted path, size, kind), cheaply, on
every `dvc repro`, as the listing stage lists data.root."""

from vggbn.runner import stage


def run(paths, params):
    """Scan `transfer.root` into the listing `--out`; the root and the counts of what was listed."""
    from vggbn.storage.listing import list_folder
    from vggbn.storage.results import StageResult

    return StageResult(list_folder(root=params.transfer.root, out=paths.out))


if __name__ == "__main__":
    stage.main(__doc__, run, out="listing to write (TSV: path, size, kind)")
