"""Layer names of the pretrained classifier, known without TensorFlow, so a bad `features.cut` fails in the first
stage within a second instead of after the demo model is trained and the images are sampled."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

DEMO_BLOCKS = 3  # conv blocks of the demo classifier (models.DEMO_FILTERS; tests/test_models.py checks the names)


def _vgg_layers(blocks: list[int]) -> list[str]:
    names = ["input_layer"]
    for block, convs in enumerate(blocks, start=1):
        names += [f"block{block}_conv{i}" for i in range(1, convs + 1)] + [f"block{block}_pool"]
    return names


VGG16_LAYERS = _vgg_layers([2, 2, 3, 3, 3]) + ["flatten", "fc1", "fc2", "predictions"]
DEMO_LAYERS = _vgg_layers([2] * DEMO_BLOCKS) + ["flatten", "fc1", "fc1_dropout", "fc2", "fc2_dropout",
                                                      "predictions"]


def _file_layers(path: Path) -> list[str] | None:
    """Names from a `.keras` file's config.json or a legacy `.h5` file's model_config; None if unreadable."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
        else:
            import h5py

            with h5py.File(path, "r") as file:
                config = json.loads(file.attrs["model_config"])
        return [layer["config"]["name"] for layer in config["config"]["layers"]]
    except (OSError, KeyError, ValueError, TypeError):
        return None  # loading the model later gives the precise error


def layer_names(source: str) -> list[str] | None:
    """The layers of `model.source` (demo, vgg16 or a model file), or None where they cannot be known yet."""
    if source == "demo":
        return DEMO_LAYERS
    if source == "vgg16":
        return VGG16_LAYERS
    path = Path(source)
    return _file_layers(path) if path.is_file() else None
