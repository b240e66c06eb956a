"""What every stage script shares: its command-line paths, validated params, logging, a one-line summary when it is
done, and one-line errors instead of tracebacks.

Every stage script has one shape (stages/<stage>.py, named as in dvc.yaml):

    def run(paths, params) -> StageResult:   # the stage's work: its metrics and plot tables
        ...

    if __name__ == "__main__":
        stage.main(__doc__, run, model="the pretrained classifier (.keras)", ..., metrics="JSON ...")

`main` parses one required `--some-name` path per keyword, validates the whole params.yaml, calls `run`, and hands
what it returns to the one writer (`vggbn.storage.results.write_result`): the metrics to `--metrics`, each plot
table to the option of the plot's name. Nothing here can change a stage's result, only accept or refuse its inputs
(the writer it calls is a dependency of every stage in its own right), so the runner's folder is no stage's DVC
dependency.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Callable

from vggbn import VggbnError
from vggbn.cluster import environment
from vggbn.runner import gpus, launch
from vggbn import console
from vggbn.cluster import watchdog
from vggbn.storage.atomic import disk_full_error, is_disk_full
from vggbn.runner.layer_names import layer_names
from vggbn.runner.params import Params, ParamsError, load_params
from vggbn.runner.summary import summary

PARAMS_FILE = "params.yaml"


class Many(str):
    """The help text of an option that takes one or more paths (`--metrics a.json b.json`)."""


def arguments(description: str, **options: str) -> argparse.Namespace:
    """Parse the stage's command line: one required `--some-name` option per keyword `some_name=help`; a `Many`
    help takes one or more values."""
    parser = argparse.ArgumentParser(description=description)
    for name, help_text in options.items():
        parser.add_argument(f"--{name.replace('_', '-')}", required=True, help=help_text,
                            nargs="+" if isinstance(help_text, Many) else None)
    return parser.parse_args()


def main(description: str, entry: Callable[[argparse.Namespace, Params], object], /, *, runs_model: bool = False,
         **options: str) -> None:
    """The whole of a stage script's `__main__`: parse the paths (`options`, as `arguments` takes them), validate
    params.yaml, call `entry(paths, params)`, write the StageResult it returns, log its summary and exit.

    The result's metrics go to the `--metrics` path and each plot table to the path of the option named as the
    plot; a stage without those options writes its outputs itself (a model, a listing) and returns metrics only
    for its summary.
    """
    def stage_main():
        paths = arguments(description, **options)
        result = entry(paths, params())
        from vggbn.storage.results import write_result

        write_result(result, metrics=getattr(paths, "metrics", None) if "metrics" in options else None,
                     plots={name: getattr(paths, name) for name in result.plots})
        return result

    execute(stage_main, runs_model=runs_model)


def params() -> Params:
    """The whole params.yaml, validated: a bad key anywhere fails every stage before it does any work."""
    loaded = load_params(PARAMS_FILE)
    check_cut(loaded)
    return loaded


def check_cut(loaded: Params) -> None:
    """`features.cut` must name a layer of the model, where its layers can be known without loading it."""
    cut = loaded.features.cut
    names = layer_names(loaded.model.source) if cut is not None else None
    if names is not None and cut not in names:
        close = difflib.get_close_matches(cut, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ParamsError(f"{PARAMS_FILE}: features.cut: model.source={loaded.model.source} has no layer "
                          f"{cut!r}{hint}; its layers: {', '.join(names)}")


def exit_status(main: Callable[[], None]) -> int:
    """Run `main`; 0, or 2 after reporting a VggbnError, or a full disk met by any writer (dvclive, Keras), as one
    line on stderr (no traceback).

    A worker of a multi-worker cluster that fails names itself in that line, and ends at once with its Slurm job step
    (`watchdog.end`): the others, waiting in a collective it will never join, must not wait for the watchdog. A
    collective that failed because a peer died (TensorFlow's gRPC error) is one line too; any other exception keeps
    its traceback, followed by the line."""
    try:
        main()
    except VggbnError as error:
        return _failed(str(error))
    except Exception as error:
        if isinstance(error, (OSError, RuntimeError)) and is_disk_full(error):
            return _failed(disk_full_error(getattr(error, "filename", None) or _fullest_output(), None))
        if not _in_cluster():
            raise
        if type(error).__module__.startswith("tensorflow"):  # a collective aborted: a peer died or ended
            index, workers = environment.cluster().index, environment.cluster().workers
            return _failed(f"a collective failed ({type(error).__name__}: {_reason(str(error))}): "
                           f"{watchdog.peer(index, workers)} died or ended")
        traceback.print_exc()
        return _failed(f"{type(error).__name__}: {error}")
    return 0


def _reason(message: str) -> str:
    """The line of a TensorFlow error that says why (not "Graph execution error:" or the traceback of the op)."""
    lines = [line.strip() for line in message.splitlines() if line.strip() and not line.startswith((" ", "\t"))]
    lines = [line for line in lines if not line.startswith(("Graph execution error", "Detected at node", "File "))]
    telling = [line for line in lines if any(word in line for word in ("abort", "Socket", "onnect", "peer", "task"))]
    return ((telling or lines or ["no message"])[0])[:200]


def _in_cluster() -> bool:
    try:
        return environment.multi_worker()
    except VggbnError:
        return False


def _failed(message: str) -> int:
    if _in_cluster():
        index, workers = environment.cluster().index, environment.cluster().workers
        watchdog.end(f"worker {index} of {workers}: {message}", 2)
    print(f"error: {message}", file=sys.stderr)
    return 2


def _fullest_output() -> str:
    """Of the paths on the stage's command line (every output it writes is one), the one with the least space left:
    a writer's own error (dvclive's, say) may not name its file."""
    def free(path: str) -> int:
        folder = next((p for p in (Path(path), *Path(path).parents) if p.exists()), Path("."))
        return shutil.disk_usage(folder).free

    paths = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    return min(paths, key=free) if paths else "."


def execute(main: Callable[[], object], runs_model: bool = False) -> None:
    """Run a stage's main() and exit with its status; log the one-line summary of the StageResult it returns.

    Log lines carry the DVC stage's name (the script's own, stages/<stage>.py), and TensorFlow, if the
    stage imports it, starts without its chatter (`vggbn.console`). A stage that `runs_model`, started with
    `VGGBN_LAUNCH` set, runs as every worker of a multi-worker job instead (`vggbn.runner.launch`).
    """
    script = Path(sys.argv[0]).stem
    name = os.environ.get("DVC_STAGE") or script
    if runs_model and launch.wanted():
        status = [0]

        def relaunched():
            status[0] = launch.relaunch([sys.executable, *sys.orig_argv[1:]])
        first = exit_status(relaunched)
        sys.exit(first or status[0])

    def main_then_summary():
        console.setup_logging(name)
        console.quiet_tensorflow_import()
        if runs_model:
            launch.check_strategy_fits()
            gpus.claim_gpus()  # before TensorFlow starts CUDA
        result = main()
        try:
            logging.getLogger("vggbn.stage").info(summary(script, result.metrics))
        except Exception as error:  # the outputs are written: a summary that fails must not fail the stage
            logging.getLogger("vggbn.stage").warning("no summary of %s: %s: %s", script, type(error).__name__, error)

    sys.exit(exit_status(main_then_summary))
