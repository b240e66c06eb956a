"""Stage pretrained: materialize the classifier that model.source names (demo, vgg16 or a file) as one .keras file."""

from vggbn.runner import stage


def main():
    args = stage.arguments(__doc__, demo_model="the demo classifier, used when model.source is demo",
                           out="the pretrained classifier every later stage reads (.keras)")
    model = stage.params().model

    from vggbn.numerics.models import run_pretrained

    return run_pretrained(source=model.source, weights=model.weights, demo_path=args.demo_model, out_path=args.out)


if __name__ == "__main__":
    stage.run(main)
