"""Stage conv_features: cache the conv part's output (up to features.cut) for the sampled images in HDF5."""

import argparse

from vggbn import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the pretrained classifier (.keras)")
    parser.add_argument("--sample", required=True, help="folder with the train.tsv and valid.tsv manifests")
    parser.add_argument("--train-out", required=True, help="train features to write (HDF5)")
    parser.add_argument("--valid-out", required=True, help="valid features to write (HDF5)")
    parser.add_argument("--work", required=True, help="resumable work in progress, outside the declared outputs")
    parser.add_argument("--metrics", required=True, help="JSON with row counts and the split check")
    args = parser.parse_args()
    params = stage.params()

    from vggbn.atomic import write_json
    from vggbn.extract import conv_features

    metrics = conv_features(model_path=args.model, sample_dir=args.sample, root=params.data.root,
                            out_paths={"train": args.train_out, "valid": args.valid_out},
                            work_dir=args.work, cut=params.features.cut, batch_size=params.features.batch_size,
                            resize=params.features.resize, preprocess=params.model.preprocess_mode,
                            dtype=params.features.dtype, compute=params.features.compute, flip=params.features.flip)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    stage.run(main)
