"""Stage combine: join the conv part and the fine-tuned dense part; evaluate both models on the valid images."""

import argparse

from vggbn import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pretrained", required=True, help="the pretrained classifier (.keras)")
    parser.add_argument("--conv", required=True, help="the conv part from insert_bn (.keras)")
    parser.add_argument("--dense", required=True, help="the fine-tuned dense part (.keras)")
    parser.add_argument("--sample", required=True, help="folder with the valid.tsv manifest")
    parser.add_argument("--out", required=True, help="the combined model (.keras)")
    parser.add_argument("--weights", required=True, help="its weights alone (.weights.h5)")
    parser.add_argument("--metrics", required=True, help="JSON: loss and accuracy, combined and original")
    parser.add_argument("--confusion", required=True, help="CSV: actual and predicted class of each valid image")
    args = parser.parse_args()
    params = stage.params()

    from vggbn.atomic import write_csv, write_json
    from vggbn.combine import combine

    metrics = combine(pretrained_path=args.pretrained, conv_path=args.conv, dense_path=args.dense,
                      sample_dir=args.sample, root=params.data.root, out_path=args.out, weights_path=args.weights,
                      batch_size=params.features.batch_size, resize=params.features.resize,
                      preprocess=params.model.preprocess_mode, confusion=(confusion := []))
    write_csv(args.confusion, ["actual", "predicted"], confusion)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    stage.run(main)
