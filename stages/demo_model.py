"""Stage demo_model: train the demo's small VGG-style classifier (no batch normalization) on the demo folder."""

import argparse

from vggbn import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="the demo image folder")
    parser.add_argument("--out", required=True, help="the trained classifier (.keras)")
    parser.add_argument("--live", required=True, help="dvclive folder for the per-epoch curves")
    parser.add_argument("--metrics", required=True, help="JSON with the valid accuracy")
    args = parser.parse_args()
    demo_params = stage.params().demo

    from vggbn.atomic import write_json
    from vggbn.demo_model import train_demo_classifier
    from vggbn.models import save_model

    model, metrics = train_demo_classifier(args.data, size=demo_params.size, epochs=demo_params.epochs,
                                           batch_size=demo_params.batch_size, lr=demo_params.lr,
                                           seed=demo_params.seed, live_dir=args.live)
    save_model(model, args.out)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    stage.run(main)
