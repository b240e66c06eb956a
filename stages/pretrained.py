"""Stage pretrained: materialize the classifier that model.source names (demo, vgg16 or a file) as one .keras file."""

import argparse

from vggbn import stage


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--demo-model", required=True, help="the demo classifier, used when model.source is demo")
    parser.add_argument("--out", required=True, help="the pretrained classifier every later stage reads (.keras)")
    args = parser.parse_args()
    model_params = stage.params().model

    from vggbn.models import pretrained_classifier, save_model

    model = pretrained_classifier(source=model_params.source, weights=model_params.weights, demo_path=args.demo_model)
    save_model(model, args.out)


if __name__ == "__main__":
    stage.run(main)
