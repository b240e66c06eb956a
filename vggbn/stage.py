"""What every stage script shares: logging, validated params, and one-line errors instead of tracebacks."""

from __future__ import annotations

import difflib
import logging
import os
import sys
from typing import Callable

from vggbn import VggbnError
from vggbn.layer_names import layer_names
from vggbn.params import Params, ParamsError, load_params

PARAMS_FILE = "params.yaml"


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


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(); report a VggbnError as one line on stderr and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow C++ chatter; real errors still raise
    try:
        main()
    except VggbnError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
