"""Stage sample: a stable, seeded sample of the listed images, each checked to decode, as manifests (no copies)."""

import argparse

from vggbn import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listing", required=True, help="the listing stage's output (TSV)")
    parser.add_argument("--out", required=True,
                        help="folder to write: train.tsv, valid.tsv (path, label, md5), classes.txt, rejected.tsv")
    parser.add_argument("--metrics", required=True, help="JSON with the image and rejection counts")
    args = parser.parse_args()
    params = stage.params()

    from vggbn.atomic import write_json
    from vggbn.sample import make_sample

    metrics = make_sample(listing=args.listing, out=args.out, root=params.data.root,
                          valid_labels=params.data.valid_labels, train=params.sample.train, valid=params.sample.valid,
                          seed=params.sample.seed, strict=params.sample.strict, class_order=None)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    stage.run(main)
