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
import os
import subprocess
import sys
from pathlib import Path

from vggbn import console
from vggbn.commands.common import (DEFAULT_CLASSES, DEFAULT_COMPARE, DEFAULT_EXPORT, DEFAULT_METRICS, DEFAULT_MODEL,
                                   DEFAULT_PARAMS, DEFAULT_STATS, DEFAULT_TEMPLATE, CliError)
from vggbn.runner.stage import exit_status


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
    _add_predict(commands)
    _add_info(commands)
    _add_export(commands)
    _add_report(commands)
    _add_template(commands)
    _add_launch(commands)
    return parser


def _add_predict(commands) -> None:
    predict = commands.add_parser(
        "predict", help="top-K classes of images, with the pipeline's preprocessing",
        description="Top-K classes and probabilities of each image, resized and preprocessed as the pipeline does "
                    "(features.resize and model.preprocess of params.yaml). Class names: the sample's class "
                    "folders when their number matches the model's outputs; ImageNet WordNet ids and names for a "
                    "1000-output model; otherwise output indices.")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, BMP, GIF or WebP)")
    _add_model_and_its_inputs(predict)
    predict.add_argument("--top", type=_integer, default=5, metavar="K",
                         help="classes shown per image, at least 1 (default: 5)")
    predict.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def _add_model_and_its_inputs(command) -> None:
    """The options `predict` and `export` share: the model, and where its resize, preprocessing and classes come
    from."""
    command.add_argument("--model", default=DEFAULT_MODEL, metavar="PATH",
                         help=f"classifier (.keras), loaded with safe_mode (default: {DEFAULT_MODEL})")
    command.add_argument("--params", default=DEFAULT_PARAMS, metavar="PATH",
                         help=f"params file giving the resize and preprocessing (default: {DEFAULT_PARAMS})")
    command.add_argument("--classes", default=DEFAULT_CLASSES, metavar="PATH",
                         help=f"class names, one per line in output order (default: {DEFAULT_CLASSES})")


def _add_info(commands) -> None:
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


def _add_export(commands) -> None:
    export = commands.add_parser(
        "export", help="the model as a SavedModel for serving: raw images in, the pipeline's preprocessing inside",
        description="Write a TensorFlow SavedModel of the model whose signatures take encoded images "
                    "(serving_default) or uint8 RGB arrays of any size (serve_pixels) and resize and preprocess them "
                    "as `vggbn predict` does (params.yaml), with classes.txt and a model card (README.md: classes, "
                    "input, preprocessing, the run's identity and accuracy figures, versions).")
    _add_model_and_its_inputs(export)
    export.add_argument("--metrics", default=DEFAULT_METRICS, metavar="DIR",
                        help=f"folder of the stages' metrics JSON, quoted in the card if present (default: "
                             f"{DEFAULT_METRICS})")
    export.add_argument("--out", default=DEFAULT_EXPORT, metavar="DIR",
                        help=f"folder to write (replaced if it exists) (default: {DEFAULT_EXPORT})")


def _add_report(commands) -> None:
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


def _add_template(commands) -> None:
    template = commands.add_parser(
        "plots-template", help="let `dvc plots show` and `dvc plots diff` draw offline (Vega inlined)",
        description="Write the HTML template the pipeline's plots_template stage writes (Vega, Vega-Lite and "
                    "Vega-Embed inlined from the installed vl-convert-python) if it is missing, and name it in "
                    ".dvc/config.local, so that `dvc plots show` and `dvc plots diff` pages draw with no network. "
                    "For a clone whose `dvc repro` has not run that stage (fresh, or after `dvc pull`).")
    template.add_argument("--out", default=DEFAULT_TEMPLATE, metavar="PATH",
                          help=f"the template file (default: {DEFAULT_TEMPLATE}, the stage's output)")


def _add_launch(commands) -> None:
    launch = commands.add_parser(
        "launch", help="run a command (dvc repro) with every stage that runs a model as N local workers",
        description="Run COMMAND (e.g. dvc repro, dvc exp run, or one stage's python command) with VGGBN_LAUNCH set: "
                    "every stage that runs a model then starts as N worker processes on 127.0.0.1, each with its "
                    "TF_CONFIG, under tf.distribute's MultiWorkerMirroredStrategy; the chief alone writes files. "
                    "Results equal a one-process run's (see docs/distributed.md), so DVC reruns "
                    "nothing when you switch.")
    launch.add_argument("--workers", type=_integer, required=True, metavar="N", help="worker processes (>= 1)")
    launch.add_argument("--cores-per-worker", type=_integer, metavar="C",
                        help="pin worker i to cores i*C .. i*C+C-1, with C threads (default: no pinning)")
    launch.add_argument("run", nargs=argparse.REMAINDER, metavar="COMMAND", help="the command to run")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vggbn` command; returns the exit status (0, or 2 after an `error:` line)."""
    args = build_parser().parse_args(argv)

    def command():
        console.level()  # a bad VGGBN_LOG is an error before any work
        console.quiet_tensorflow_import()
        if args.command == "predict":
            from vggbn.commands.predict import predict
            predict(args)
        elif args.command == "info":
            from vggbn.commands.info import info
            info(args)
        elif args.command == "export":
            from vggbn.commands.export import export_command
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
