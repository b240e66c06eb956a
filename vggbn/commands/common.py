"""What the `vggbn` command's subcommands share: the pipeline's default paths, the error type of a bad input, and
the checks of the files a command reads that need no TensorFlow."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vggbn import VggbnError

DEFAULT_MODEL = "models/combined.keras"
DEFAULT_PARAMS = "params.yaml"
DEFAULT_CLASSES = "data/sample/classes.txt"
DEFAULT_STATS = "data/bn_stats.h5"
DEFAULT_METRICS = "metrics"
DVC_LOCK = "dvc.lock"
DEFAULT_COMPARE = "dvc_plots/compare"
DEFAULT_TEMPLATE = "plots_template/offline.html"
DEFAULT_EXPORT = "models/serving"
IMAGENET_CLASSES = 1000
# The numbers of a run that `info` reports: metrics file (without .json) -> keys.
RUN_METRICS = {"insert_bn": ("max_abs_diff",), "finetune": ("valid_accuracy",),
               "combine": ("combined_accuracy", "original_accuracy")}
# The numbers an export's model card quotes.
CARD_METRICS = {"insert_bn": ("max_abs_diff", "max_abs_diff_logits", "samples"),
                "combine": ("combined_accuracy", "original_accuracy", "images")}


class CliError(VggbnError):
    pass


def headline_numbers(folder: str, wanted: dict) -> dict:
    """{stage: {key: value}} of the run's headline numbers, from the metrics files present
    (`pages.report.read_metrics`: a damaged one is an error naming it)."""
    from vggbn.pages.report import read_metrics

    paths = [Path(folder) / f"{stage}.json" for stage in wanted if (Path(folder) / f"{stage}.json").is_file()]
    found = {}
    for stage, data in read_metrics(paths).items():
        values = {key: data[key] for key in wanted[stage] if key in data}
        if values:
            found[stage] = values
    return found


def check_model_file(path: str) -> None:
    if not Path(path).is_file():
        hint = " (run `dvc repro` first, or pass --model)" if path == DEFAULT_MODEL else ""
        raise CliError(f"{path}: model file not found{hint}")


def load_params(path: str):
    from vggbn.runner.params import load_params

    if path == DEFAULT_PARAMS and not Path(path).is_file():
        raise CliError(f"{path}: no params file here: run in the project folder or pass --params")
    return load_params(path)


def read_classes(path: str) -> list[str] | None:
    """The class names file's names; None where the default file is missing (outputs are named by index)."""
    from vggbn.storage.manifest import read_classes

    if path == DEFAULT_CLASSES and not os.path.lexists(path):
        return None
    return read_classes(path)


def class_labels(classes: list[str] | None, num_outputs: int, classes_path: str) -> list[tuple[str, str | None]]:
    """(class, readable name or None) for each model output.

    The class folders when there are as many as outputs (a folder named by a WordNet id gets its ImageNet name);
    ImageNet's WordNet ids and names for a 1000-output model; otherwise the output index, with a note on stderr.
    """
    from vggbn.storage.imagenet import imagenet_names

    names = imagenet_names()
    if classes is not None and len(classes) == num_outputs:
        return [(c, names.get(c)) for c in classes]
    if num_outputs == IMAGENET_CLASSES:
        return list(names.items())
    if classes is not None:
        print(f"note: {classes_path} names {len(classes)} classes but the model has {num_outputs} outputs; "
              "showing output indices", file=sys.stderr)
    return [(str(i), None) for i in range(num_outputs)]
