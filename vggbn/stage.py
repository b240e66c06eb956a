"""What every stage script shares: logging, validated params, and one-line errors instead of tracebacks."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from vggbn import VggbnError
from vggbn.params import Params, load_params

PARAMS_FILE = "params.yaml"


def params() -> Params:
    """The whole params.yaml, validated: a bad key anywhere fails every stage before it does any work."""
    return load_params(PARAMS_FILE)


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(); report a VggbnError as one line on stderr and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow C++ chatter; real errors still raise
    try:
        main()
    except VggbnError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
