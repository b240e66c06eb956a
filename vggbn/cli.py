"""The `vggbn` command: classify images with the pipeline's model, and show how a model got its batch normalization.

    vggbn predict IMAGE... [--model PATH] [--top K] [--params PATH] [--classes PATH] [--json]
    vggbn info [PATH] [--stats PATH] [--metrics DIR] [--json]
    vggbn export [--model PATH] [--params PATH] [--classes PATH] [--metrics DIR] [--out DIR]
    vggbn report --rev A [--rev B] [--out DIR]
    vggbn plots-template [--out PATH]
    vggbn launch --workers N [--cores-per-worker C] COMMAND...

Arguments are parsed, and every input that can be checked without TensorFlow (params, image files, the model
file's existence) is checked, before TensorFlow is imported (about 4 s): `--help` and a typo answer at once.
Problems with the user's inputs end as one line, `error: ...`, on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from vggbn import VggbnError
from vggbn import console
from vggbn.storage.hashing import file_md5
from vggbn.runner.stage import exit_status

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


def _integer(text: str) -> int:
    """--top's type; K >= 1 is checked after parsing (_check_top), so that K < 1 reads like every other error."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vggbn",
        description="Classify images with the pipeline's model, or show a model's layers and how its batch "
                    "normalization was calibrated. Run in the project folder (paths default to the pipeline's).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict", help="top-K classes of images, with the pipeline's preprocessing",
        description="Top-K classes and probabilities of each image, resized and preprocessed as the pipeline does "
                    "(features.resize and model.preprocess of params.yaml). Class names: the sample's class "
                    "folders when their number matches the model's outputs; ImageNet WordNet ids and names for a "
                    "1000-output model; otherwise output indices.")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, BMP or GIF)")
    predict.add_argument("--model", default=DEFAULT_MODEL, metavar="PATH",
                         help=f"classifier (.keras), loaded with safe_mode (default: {DEFAULT_MODEL})")
    predict.add_argument("--top", type=_integer, default=5, metavar="K",
                         help="classes shown per image, at least 1 (default: 5)")
    predict.add_argument("--params", default=DEFAULT_PARAMS, metavar="PATH",
                         help=f"params file giving the resize and preprocessing (default: {DEFAULT_PARAMS})")
    predict.add_argument("--classes", default=DEFAULT_CLASSES, metavar="PATH",
                         help=f"class names, one per line in output order (default: {DEFAULT_CLASSES})")
    predict.add_argument("--json", action="store_true", help="print one JSON document instead of text")

    info = commands.add_parser(
        "info", help="a model's layers, where batch normalization sits and how it was calibrated",
        description="The model's layers (name, type, output shape, params) with its BatchNormalization layers "
                    "marked; for each, the statistics it was calibrated with (units, dead units, position) from "
                    "the bn_stats file, and the run's identity error and accuracies from the metrics folder.")
    info.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="PATH",
                      help=f"model file (.keras) (default: {DEFAULT_MODEL})")
    info.add_argument("--stats", default=DEFAULT_STATS, metavar="PATH",
                      help=f"BN statistics written by bn_stats, used if present (default: {DEFAULT_STATS})")
    info.add_argument("--metrics", default=DEFAULT_METRICS, metavar="DIR",
                      help=f"folder of the stages' metrics JSON, used if present (default: {DEFAULT_METRICS})")
    info.add_argument("--json", action="store_true", help="print one JSON document instead of text")

    export = commands.add_parser(
        "export", help="the model as a SavedModel for serving: raw images in, the pipeline's preprocessing inside",
        description="Write a TensorFlow SavedModel of the model whose signatures take encoded images "
                    "(serving_default) or uint8 RGB arrays of any size (serve_pixels) and resize and preprocess them "
                    "as `vggbn predict` does (params.yaml), with classes.txt and a model card (README.md: classes, "
                    "input, preprocessing, the run's identity and accuracy figures, versions).")
    export.add_argument("--model", default=DEFAULT_MODEL, metavar="PATH",
                        help=f"classifier (.keras) (default: {DEFAULT_MODEL})")
    export.add_argument("--params", default=DEFAULT_PARAMS, metavar="PATH",
                        help=f"params file giving the resize and preprocessing (default: {DEFAULT_PARAMS})")
    export.add_argument("--classes", default=DEFAULT_CLASSES, metavar="PATH",
                        help=f"class names, one per line in output order (default: {DEFAULT_CLASSES})")
    export.add_argument("--metrics", default=DEFAULT_METRICS, metavar="DIR",
                        help=f"folder of the stages' metrics JSON, quoted in the card if present (default: "
                             f"{DEFAULT_METRICS})")
    export.add_argument("--out", default=DEFAULT_EXPORT, metavar="DIR",
                        help=f"folder to write (replaced if it exists) (default: {DEFAULT_EXPORT})")

    report = commands.add_parser(
        "report", help="two experiments or revisions side by side: params, key numbers and plots, offline",
        description="A report of two experiments (dvc exp names), git revisions or `workspace` side by side: the "
                    "params that differ, the key numbers of each, and the plots as `dvc plots diff` draws them, "
                    "written as index.html (inline SVG, no script, no network) and README.md with PNGs. One --rev "
                    "compares it with the workspace. The run's own report is the pipeline's `report` stage.")
    report.add_argument("--rev", action="append", required=True, metavar="REV",
                        help="an experiment name, a git revision, or workspace (give it twice)")
    report.add_argument("--out", default=DEFAULT_COMPARE, metavar="DIR",
                        help=f"folder to write the report to (default: {DEFAULT_COMPARE})")

    template = commands.add_parser(
        "plots-template", help="let `dvc plots show` and `dvc plots diff` draw offline (Vega inlined)",
        description="Write the HTML template the pipeline's plots_template stage writes (Vega, Vega-Lite and "
                    "Vega-Embed inlined from the installed vl-convert-python) if it is missing, and name it in "
                    ".dvc/config.local, so that `dvc plots show` and `dvc plots diff` pages draw with no network. "
                    "For a clone whose `dvc repro` has not run that stage (fresh, or after `dvc pull`).")
    template.add_argument("--out", default=DEFAULT_TEMPLATE, metavar="PATH",
                          help=f"the template file (default: {DEFAULT_TEMPLATE}, the stage's output)")

    launch = commands.add_parser(
        "launch", help="run a command (dvc repro) with every stage that runs a model as N local workers",
        description="Run COMMAND (e.g. dvc repro, dvc exp run, or one stage's python command) with VGGBN_LAUNCH set: "
                    "every stage that runs a model then starts as N worker processes on 127.0.0.1, each with its "
                    "TF_CONFIG, under tf.distribute's MultiWorkerMirroredStrategy; the chief alone writes files. "
                    "Results equal a one-process run's (see the README's 'More than one machine'), so DVC reruns "
                    "nothing when you switch.")
    launch.add_argument("--workers", type=_integer, required=True, metavar="N", help="worker processes (>= 1)")
    launch.add_argument("--cores-per-worker", type=_integer, metavar="C",
                        help="pin worker i to cores i*C .. i*C+C-1, with C threads (default: no pinning)")
    launch.add_argument("run", nargs=argparse.REMAINDER, metavar="COMMAND", help="the command to run")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vggbn` command; returns the exit status (0, or 2 after an `error:` line)."""
    args = build_parser().parse_args(argv)

    def command():
        console.level()  # a bad VGGBN_LOG is an error before any work
        console.quiet_tensorflow_import()
        if args.command == "predict":
            predict(args)
        elif args.command == "info":
            info(args)
        elif args.command == "export":
            export_command(args)
        elif args.command == "report":
            compare_report(args)
        elif args.command == "launch":
            launch_command(args)
        else:
            plots_template(args)
        sys.stdout.flush()

    try:
        return exit_status(command)
    except BrokenPipeError:  # `vggbn predict ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def launch_command(args) -> None:
    """`vggbn launch`: COMMAND with VGGBN_LAUNCH=local:N[:C] (`vggbn.runner.launch`), exiting with its status."""
    from vggbn.runner import launch

    run = args.run[1:] if args.run[:1] == ["--"] else args.run
    if not run:
        raise CliError("launch: expected a command to run, e.g. vggbn launch --workers 2 dvc repro")
    value = f"local:{args.workers}" + (f":{args.cores_per_worker}" if args.cores_per_worker else "")
    launch.parse(value)  # N, C >= 1
    try:
        status = subprocess.call(run, env={**os.environ, launch.ENV: value})
    except FileNotFoundError:
        raise CliError(f"launch: command not found: {run[0]}") from None
    if status:
        sys.exit(status)


# --- checks that need no TensorFlow, and TensorFlow's import ---------------------------------------------------

def _check_top(top: int) -> None:
    if top < 1:
        raise CliError(f"--top: expected an integer >= 1, got {top}")


def _check_images(paths: list[str]) -> None:
    """Each image must be a file that Pillow decodes fully, in a format TensorFlow reads (the sample's checks)."""
    from vggbn.storage.sampling import check_image

    for path in paths:
        if not os.path.lexists(path):
            raise CliError(f"{path}: no such image file")
        reason = check_image(path).reason
        if reason is not None:
            raise CliError(f"{path}: cannot use this image: {reason}")


def _check_model_file(path: str) -> None:
    if not Path(path).is_file():
        hint = " (run `dvc repro` first, or pass --model)" if path == DEFAULT_MODEL else ""
        raise CliError(f"{path}: model file not found{hint}")


def _load_params(path: str):
    from vggbn.runner.params import load_params

    if path == DEFAULT_PARAMS and not Path(path).is_file():
        raise CliError(f"{path}: no params file here: run in the project folder or pass --params")
    return load_params(path)


def _read_classes(path: str) -> list[str] | None:
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


# --- predict ------------------------------------------------------------------------------------------------

def top_k(probabilities, k: int) -> list[int]:
    """Indices of the k largest values, largest first; ties keep output order."""
    import numpy as np

    return [int(i) for i in np.argsort(-np.asarray(probabilities), kind="stable")[:k]]


def predict(args) -> None:
    _check_top(args.top)
    params = _load_params(args.params)
    _check_images(args.images)
    _check_model_file(args.model)
    classes = _read_classes(args.classes)

    import tensorflow as tf

    from vggbn.numerics import images, models

    model = models.load_model_file(args.model)
    size = models.input_size(model)
    shape = model.output_shape
    if not (isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[-1], int)):
        raise CliError(f"{args.model}: expected one output of class probabilities, got {shape}")
    labels = class_labels(classes, shape[-1], args.classes)
    k = min(args.top, len(labels))
    inputs = images.ImageInput.from_params(params, root="")
    resize, preprocess = inputs.resize, inputs.preprocess
    dataset = inputs.dataset(args.images, size)
    width = max(len(_label(c, n)) for c, n in labels)
    results, done, run_model = [], 0, models.predictor(model)
    try:
        for batch in dataset:
            for probabilities in run_model(batch):
                path = args.images[done]
                done += 1
                rows = [(rank, index, *labels[index], float(probabilities[index]))
                        for rank, index in enumerate(top_k(probabilities, k), start=1)]
                if args.json:
                    results.append({"path": path, "predictions": [
                        {"rank": rank, "index": index, "class": cls, "name": name, "probability": p}
                        for rank, index, cls, name, p in rows]})
                else:
                    print(("\n" if done > 1 else "") + path)
                    for rank, _, cls, name, p in rows:
                        print(f"{rank:>4}  {_label(cls, name):<{width}}  {p:.4f}")
                    sys.stdout.flush()
    except tf.errors.OpError as error:  # Pillow read it but TensorFlow does not: name the file
        culprit = _undecodable(args.images[done:], size, resize, preprocess) or "one of the images"
        raise CliError(f"{culprit}: TensorFlow cannot decode it: {str(error.message).splitlines()[0]}") from None
    if args.json:
        json.dump({"model": args.model, "resize": resize, "preprocess": preprocess, "input_size": list(size),
                   "top": k, "images": results}, sys.stdout, indent=2)
        print()


def _undecodable(paths: list[str], size, resize: str, preprocess: str) -> str | None:
    import tensorflow as tf

    from vggbn.numerics import images

    for path in paths:
        try:
            images.load_image(tf.constant(path), size, resize, preprocess)
        except tf.errors.OpError:
            return path
    return None


def _label(cls: str, name: str | None) -> str:
    return f"{cls} {name}" if name else cls


# --- export -------------------------------------------------------------------------------------------------

def export_command(args) -> None:
    """`vggbn export`: the SavedModel, its classes and card, with the resize and preprocessing `predict` uses."""
    params = _load_params(args.params)
    _check_model_file(args.model)
    classes = _read_classes(args.classes)

    from vggbn.numerics import images, models, serving

    model = models.load_model_file(args.model)
    labels = class_labels(classes, model.output_shape[-1], args.classes)
    inputs = images.ImageInput.from_params(params, root="")
    out = serving.export(model, args.out, resize=inputs.resize, preprocess=inputs.preprocess,
                         class_names=[cls for cls, _ in labels], metrics=_read_metrics(args.metrics, CARD_METRICS))
    print(f"{out}: SavedModel ({serving.ENCODED_SIGNATURE}: encoded images, {serving.PIXELS_SIGNATURE}: uint8 "
          f"arrays; {inputs.resize} to {'x'.join(map(str, models.input_size(model)))}, {inputs.preprocess}), "
          f"{len(labels)} classes, model card {out / serving.CARD}")


# --- info ---------------------------------------------------------------------------------------------------

def _read_metrics(folder: str, wanted: dict = RUN_METRICS) -> dict:
    """{stage: {key: value}} of the run's headline numbers, from the metrics files present."""
    found = {}
    for stage, keys in wanted.items():
        path = Path(folder) / f"{stage}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        values = {key: data[key] for key in keys if isinstance(data, dict) and key in data}
        if values:
            found[stage] = values
    return found


def _lock_check(paths: list[str]) -> dict[str, str]:
    """For each file that dvc.lock records as a stage output: 'matches' or 'differs' (a file of another run)."""
    from vggbn.storage.dvccache import recorded_outputs

    recorded = {path: str(out["md5"]) for path, out in recorded_outputs(DVC_LOCK).items()}
    status = {}
    for path in paths:
        key = os.path.normpath(os.path.relpath(path)) if os.path.isabs(path) else os.path.normpath(path)
        if key in recorded and Path(path).is_file():
            status[path] = "matches" if file_md5(path) == recorded[key] else "differs"
    return status


def _bn_position(model, index: int) -> str:
    """Where a BN layer sits, read off the model: between a linear layer and an `Activation`, or after one."""
    previous = model.layers[index - 1] if index > 0 else None
    following = model.layers[index + 1] if index + 1 < len(model.layers) else None
    linear = previous is not None and previous.get_config().get("activation", "linear") == "linear"
    import keras

    if linear and isinstance(following, (keras.layers.Activation, keras.layers.ReLU)):
        return "before_activation"
    return "after_activation"


def _calibration(layer, stats: dict | None, attrs: dict, stats_path: str) -> dict | None:
    """How a BN layer `<name>_bn` was calibrated: the statistics of `<name>` in the stats file, if there."""
    import numpy as np

    if stats is None:
        return None
    source = layer.name[:-3] if layer.name.endswith("_bn") else layer.name
    if source not in stats:
        return {"stats_file": stats_path, "layer": source, "found": False}
    mean, variance = stats[source]
    result = {"stats_file": stats_path, "layer": source, "found": True, "units": int(mean.shape[0]),
              "dead_units": int((variance == 0).sum()), "position": attrs.get("position")}
    moving_mean = layer.moving_mean.numpy().astype(np.float64)
    result["fits_layer"] = moving_mean.shape == mean.shape
    if result["fits_layer"] and mean.size:
        result["moving_mean_shift"] = float(np.abs(moving_mean - mean).max())
    return result


def _shape(layer) -> list | None:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return None
    return [None if d is None else int(d) for d in shape]


def describe_model(path: str, stats_path: str, metrics_dir: str) -> dict:
    """Everything `vggbn info` shows, as a JSON-ready dict."""
    import keras

    from vggbn.numerics import models
    from vggbn.storage.statistics import load_statistics

    model = models.load_model_file(path)
    stats, attrs = None, {}
    if Path(stats_path).is_file():
        try:
            stats, attrs = load_statistics(stats_path)
        except (OSError, KeyError) as error:
            raise CliError(f"{stats_path}: cannot read BN statistics: {error}") from None
    layers, bn_layers = [], []
    for index, layer in enumerate(model.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layers.append({"name": layer.name, "type": type(layer).__name__, "output_shape": _shape(layer),
                       "params": int(layer.count_params()), "batch_norm": is_bn})
        if is_bn:
            bn_layers.append({"name": layer.name, "index": index, "units": int(layer.moving_mean.shape[0]),
                              "position": _bn_position(model, index),
                              "calibration": _calibration(layer, stats, attrs, stats_path)})
    trainable = sum(int(math.prod(w.shape)) for w in model.trainable_weights)
    total = int(model.count_params())
    metrics = _read_metrics(metrics_dir)
    files = [path] + ([stats_path] if stats is not None else []) + [
        str(Path(metrics_dir) / f"{stage}.json") for stage in metrics]
    return {"path": path, "name": model.name, "input_shape": list(model.input_shape[1:]),
            "output_shape": list(model.output_shape[1:]),
            "params": {"total": total, "trainable": trainable, "non_trainable": total - trainable},
            "layers": layers, "batch_norm_layers": bn_layers, "metrics": metrics,
            "dvc_lock": _lock_check(files)}


def info(args) -> None:
    _check_model_file(args.model)
    report = describe_model(args.model, args.stats, args.metrics)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    for line in format_info(report):
        print(line)


def _format_shape(shape) -> str:
    return "?" if shape is None else "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def format_info(report: dict) -> list[str]:
    p = report["params"]
    out = report["output_shape"]
    outputs = f"{out[0]} outputs" if len(out) == 1 else f"output {_format_shape(out)}"
    lines = [f"{report['path']}: model {report['name']!r}, input {_format_shape(report['input_shape'])}, "
             f"{outputs}, {p['total']:,} params ({p['non_trainable']:,} non-trainable)", ""]
    rows = [(layer["name"], layer["type"], _format_shape(layer["output_shape"]), f"{layer['params']:,}",
             "BN" if layer["batch_norm"] else "") for layer in report["layers"]]
    header = ("layer", "type", "output shape", "params", "")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(4)]
    for name, kind, shape, params, mark in [header] + rows:
        lines.append(f"{mark:<2}  {name:<{widths[0]}}  {kind:<{widths[1]}}  {shape:<{widths[2]}}  "
                     f"{params:>{widths[3]}}".rstrip())
    lines.append("")
    bn = report["batch_norm_layers"]
    if not bn:
        lines.append("batch normalization: none")
    else:
        lines.append(f"batch normalization: {len(bn)} layer{'s' if len(bn) > 1 else ''}")
        for layer in bn:
            lines.append(f"  {layer['name']}: {layer['units']} units, " + _format_calibration(layer))
    if report["metrics"]:
        lines.append("run metrics: " + "; ".join(
            f"{stage} " + ", ".join(f"{key} {_number(value)}" for key, value in values.items())
            for stage, values in report["metrics"].items()))
    lock = report["dvc_lock"]
    differs = [path for path, state in lock.items() if state == "differs"]
    if differs:
        lines.append(f"dvc.lock: {', '.join(differs)} differ{'s' if len(differs) == 1 else ''} from the recorded "
                     "run: the calibration and metrics shown may belong to another model")
    elif lock:
        lines.append(f"dvc.lock: {', '.join(lock)} {'are' if len(lock) > 1 else 'is'} as recorded (one run)")
    return lines


def _format_calibration(layer: dict) -> str:
    """The text after a BN layer's name and units: its position and how it was calibrated."""
    calibration = layer["calibration"]
    if calibration is None:
        return f"{layer['position']}; no BN statistics file, calibration unknown"
    if not calibration["found"]:
        return f"{layer['position']}; {calibration['stats_file']} has no statistics of {calibration['layer']}"
    position = calibration["position"] or layer["position"]
    text = f"{position}, calibrated on {calibration['layer']} ({calibration['stats_file']}): "
    if not calibration["fits_layer"]:
        return text + f"{calibration['units']} units there, which do not fit this layer"
    dead = calibration["dead_units"]
    text += f"{dead} dead unit{'' if dead == 1 else 's'} (variance 0)"
    if "moving_mean_shift" in calibration:
        text += f", moving mean moved by up to {_number(calibration['moving_mean_shift'])} since"
    if calibration["position"] and calibration["position"] != layer["position"]:
        text += f" (but the model looks {layer['position']})"
    return text


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if value and abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


# --- report and plots-template ------------------------------------------------------------------------------------

def _check_dvc_project() -> None:
    if not Path(".dvc").is_dir():
        raise CliError(f"{Path.cwd()}: not a DVC project (no .dvc folder): run in the project folder")


def compare_report(args) -> None:
    _check_dvc_project()
    if len(args.rev) > 2:
        raise CliError(f"--rev: give one or two revisions, got {len(args.rev)}")
    from vggbn.pages.report import write_comparison

    page = write_comparison(args.rev, args.out)
    print(page)


def plots_template(args) -> None:
    _check_dvc_project()
    from vggbn.pages import plots_template as template

    if not Path(args.out).is_file():
        template.write_template(args.out)
        print(f"{args.out}: offline plots template written")
    print(template.point_dvc_at(args.out))


if __name__ == "__main__":
    sys.exit(main())
