"""Stage pretrained: materialize the classifier that model.source names (demo, vgg16 or a file) as one .keras file."""

from vggbn.runner import stage


def run(paths, params):
    """The classifier `model.source` names, saved to `--out`; its name and size."""
    from vggbn.numerics.models import pretrained_classifier, save_model
    from vggbn.storage.results import StageResult

    model = pretrained_classifier(source=params.model.source, weights=params.model.weights,
                                  demo_path=paths.demo_model)
    save_model(model, paths.out)
    return StageResult({"name": model.name, "params": model.count_params(), "layers": len(model.layers)})


if __name__ == "__main__":
    stage.main(__doc__, run, demo_model="the demo classifier, used when model.source is demo",
               out="the pretrained classifier every later stage reads (.keras)")
