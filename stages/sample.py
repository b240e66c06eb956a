"""Stage sample: a stable, seeded sample of the listed images, each checked to decode, as manifests (no copies)."""

from vggbn.runner import stage


def run(paths, params):
    """Read the listing, draw and check the sample, write the sample folder `--out`; the image counts."""
    from vggbn.storage.sampling import Draw, build_sample
    from vggbn.storage.listing import read_listing
    from vggbn.storage.manifest import write_sample
    from vggbn.storage.results import StageResult

    draw = Draw(params.sample.train, params.sample.valid, params.sample.seed, params.sample.strict)
    sample = build_sample(entries=read_listing(paths.listing), root=params.data.root, draw=draw,
                          valid_labels=params.data.valid_labels)
    write_sample(paths.out, sample)
    return StageResult(sample.metrics)


if __name__ == "__main__":
    stage.main(__doc__, run, listing="the listing stage's output (TSV)",
               out="folder to write: train.tsv, valid.tsv (path, label, md5), classes.txt, rejected.tsv",
               metrics="JSON with the image and rejection counts")
