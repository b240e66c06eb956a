"""Stage sample: a stable, seeded sample of the listed images, each checked to decode, as manifests (no copies)."""

from vggbn.runner import stage


def main():
    args = stage.arguments(__doc__, listing="the listing stage's output (TSV)",
                           out="folder to write: train.tsv, valid.tsv (path, label, md5), classes.txt, rejected.tsv",
                           metrics="JSON with the image and rejection counts")
    params = stage.params()

    from vggbn.storage.files import write_result
    from vggbn.numerics.sample import run_sample

    result = run_sample(listing=args.listing, out=args.out, root=params.data.root,
                        valid_labels=params.data.valid_labels, train=params.sample.train, valid=params.sample.valid,
                        seed=params.sample.seed, strict=params.sample.strict)
    write_result(result, metrics=args.metrics)
    return result


if __name__ == "__main__":
    stage.run(main)
