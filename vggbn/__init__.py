"""vggbn: give a pretrained classifier batch normalization without changing what it computes.

Importing the package is cheap: nothing here imports TensorFlow, so stage scripts and the CLI can
validate their arguments and params before paying for it.
"""

__version__ = "0.1.0"


class VggbnError(Exception):
    """A problem with the user's inputs (params, files, folders), reported as one line without a traceback."""
