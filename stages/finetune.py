"""Stage finetune: train the dense part with BN on cached train features streamed from HDF5."""

import argparse

from vggbn import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the dense part with BN (.keras)")
    parser.add_argument("--train", required=True, help="train features (HDF5)")
    parser.add_argument("--valid", required=True, help="valid features (HDF5)")
    parser.add_argument("--out", required=True, help="the fine-tuned dense part (.keras)")
    parser.add_argument("--work", required=True, help="per-epoch checkpoints, outside the declared outputs")
    parser.add_argument("--live", required=True, help="dvclive folder for the per-epoch curves")
    parser.add_argument("--metrics", required=True, help="JSON with the last epoch's loss and accuracy")
    args = parser.parse_args()
    params = stage.params().finetune

    from vggbn.atomic import write_json
    from vggbn.models import save_model
    from vggbn.train import finetune_files

    model, metrics = finetune_files(model_path=args.model, train_path=args.train, valid_path=args.valid,
                                    work_dir=args.work, live_dir=args.live, params=params)
    save_model(model, args.out)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    stage.run(main)
