"""Stage model_listing: the model files model.source and model.weights name, by content (key, path, size, MD5), on
every `dvc repro`.

A file a param names is no DVC dependency; this listing stands in for it and stays byte-identical while the file's
bytes do, so retraining the file in place reruns `pretrained` and what follows, and nothing else reruns anything.
"""

from vggbn.runner import stage


def run(paths, params):
    """List the files into `--out`, remembering their hashes in `--hashes`; the counts listed, hashed, reused."""
    from vggbn.storage.model_files import list_model_files
    from vggbn.storage.results import StageResult

    return StageResult(list_model_files(source=params.model.source, weights=params.model.weights, out=paths.out,
                                        hashes=paths.hashes))


if __name__ == "__main__":
    stage.main(__doc__, run, out="listing to write (TSV: key, path, size, md5)",
               hashes="memo of each file's MD5 by size, mtime and inode (JSON, a work file)")
