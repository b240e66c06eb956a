"""Stage transfer (the notebook's vgg_ft_bn): train a new softmax layer for a new task's classes on top of the
fine-tuned dense part with BN and, side by side, the original dense part without BN, over learning rates."""

import argparse
import math

from vggbn import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pretrained", required=True, help="the pretrained classifier (.keras)")
    parser.add_argument("--finetuned", required=True, help="the fine-tuned dense part with BN (.keras)")
    parser.add_argument("--cut-from", required=True, help="a feature file of the pipeline: where to cut")
    parser.add_argument("--listing", required=True, help="listing of transfer.root")
    parser.add_argument("--train-out", required=True, help="the new task's train features (HDF5)")
    parser.add_argument("--valid-out", required=True, help="the new task's valid features (HDF5)")
    parser.add_argument("--work", required=True, help="resumable work in progress of the features")
    parser.add_argument("--metrics", required=True, help="JSON: accuracy and loss per learning rate, with and without BN")
    parser.add_argument("--plots", required=True, help="folder: accuracy against learning rate, one CSV per start")
    args = parser.parse_args()
    params = stage.params()

    from vggbn.atomic import atomic_path, write_csv, write_json
    from vggbn.transfer import transfer

    report = transfer(pretrained_path=args.pretrained, finetuned_path=args.finetuned, cut_from=args.cut_from,
                      listing=args.listing, root=params.transfer.root,
                      out_paths={"train": args.train_out, "valid": args.valid_out}, work_dir=args.work,
                      params=params.transfer, image_batch_size=params.features.batch_size,
                      resize=params.features.resize, preprocess=params.model.preprocess_mode)
    with atomic_path(args.plots) as folder:
        folder.mkdir()
        for start in ("with_bn", "without_bn"):
            rows = [(float(lr), math.log10(float(lr)), result["accuracy"])
                    for lr, result in report[start]["per_lr"].items()]
            write_csv(folder / f"{start}.csv", ["lr", "log10_lr", "accuracy"], rows)
    write_json(args.metrics, report)


if __name__ == "__main__":
    stage.run(main)
