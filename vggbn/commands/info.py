"""`vggbn info`: a model's layers, where its batch normalization sits, and how each BN layer was calibrated."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from vggbn.commands.common import DVC_LOCK, RUN_METRICS, CliError, check_model_file, headline_numbers
from vggbn.storage.hashing import file_md5


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
    metrics = headline_numbers(metrics_dir, RUN_METRICS)
    files = [path] + ([stats_path] if stats is not None else []) + [
        str(Path(metrics_dir) / f"{stage}.json") for stage in metrics]
    return {"path": path, "name": model.name, "input_shape": list(model.input_shape[1:]),
            "output_shape": list(model.output_shape[1:]),
            "params": {"total": total, "trainable": trainable, "non_trainable": total - trainable},
            "layers": layers, "batch_norm_layers": bn_layers, "metrics": metrics,
            "dvc_lock": _lock_check(files)}


def info(args) -> None:
    check_model_file(args.model)
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
