"""Load and validate params.yaml into typed, frozen objects.

Every stage validates the whole file before any heavy import or work, so a typo anywhere fails the first
stage within a second, with one line that names the key, the value and what is allowed. Nothing here
imports TensorFlow.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import yaml

from vggbn.choices import PREPROCESS_MODES, RESIZE_MODES
from vggbn import VggbnError

BN_LAYERS = ("dense", "conv", "all")
BN_POSITIONS = ("after_activation", "before_activation")
DTYPES = ("float32", "float16")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
TRANSFER_TRAIN = ("head", "dense")


class ParamsError(VggbnError):
    pass


def _choice(*allowed):
    def check(value):
        if value not in allowed:
            return "one of " + ", ".join(map(str, allowed))
    check.allowed = allowed  # documented_choices() lists them
    return check


def _at_least(low):
    def check(value):
        if value < low:
            return f"a value >= {low}"
    return check


def _positive(value):
    if not value > 0 or not math.isfinite(value):
        return "a finite number > 0"


def _fraction(value):
    if not 0 < value < 1:
        return "a number strictly between 0 and 1"


def _dropout(value):
    if not 0 <= value < 1:
        return "a number >= 0 and < 1"


def _digit(value):
    if not 0 <= value <= 9:
        return "a digit from 0 to 9"


def _non_empty(value):
    if not value.strip():
        return "a non-empty string"


def _param(default, check=None, doc="", choices=()):
    """`choices`: the documented values of a key checked elsewhere (in _check_combinations)."""
    return field(default=default, metadata={"check": check, "doc": doc,
                                            "choices": tuple(getattr(check, "allowed", choices))})


@dataclass(frozen=True)
class DataParams:
    root: str = _param("data/demo", _non_empty, "image folder in ImageNet layout: <root>/train/<class>/*, <root>/valid/<class>/* (or val/)")
    valid_labels: typing.Optional[str] = _param(
        None, None, "CSV (ImageId,PredictionString) labelling a flat <root>/valid folder, relative to the root; null: class folders")


@dataclass(frozen=True)
class DemoParams:
    size: int = _param(32, _at_least(16), "side of the square demo images, pixels")
    valid_fraction: float = _param(0.2, _fraction, "share of each digit held out for validation")
    seed: int = _param(0, _at_least(0), "seed of the demo split and of the demo model's training")
    epochs: int = _param(12, _at_least(1), "epochs to train the demo classifier")
    batch_size: int = _param(64, _at_least(1), "batch size to train the demo classifier")
    lr: float = _param(0.001, _positive, "Adam learning rate of the demo classifier")
    classes: tuple[int, ...] = _param((0, 1, 2, 3, 4, 5, 6), _digit, "digits the demo classifier learns; the others make the transfer task")
    transfer_train: int = _param(20, _at_least(1), "train images per held-back digit in the transfer folder")


@dataclass(frozen=True)
class ModelParams:
    source: str = _param("demo", _non_empty, "demo, vgg16, or a path to a .keras/.h5 classifier")
    weights: typing.Optional[str] = _param(None, None, "vgg16 only: imagenet (default), none (random, fixed seed), or a weights file")
    preprocess: typing.Optional[str] = _param(None, None, "model files only: caffe, tf, torch or none",
                                              choices=PREPROCESS_MODES)


@dataclass(frozen=True)
class SampleParams:
    train: typing.Optional[int] = _param(None, _at_least(1), "training images to sample; null means all")
    valid: typing.Optional[int] = _param(None, _at_least(1), "validation images to sample; null means all")
    seed: int = _param(0, _at_least(0), "seed of the stable, hash-ranked sample")
    strict: bool = _param(False, None, "true: any unusable image is an error instead of being replaced")


@dataclass(frozen=True)
class FeaturesParams:
    cut: typing.Optional[str] = _param(None, None, "layer whose output is cached; null: the last one before the dense head")
    batch_size: int = _param(64, _at_least(1), "images per batch through the conv part; a resumable chunk holds at most one batch")
    resize: str = _param("squash", _choice(*RESIZE_MODES), "how images reach the model's input size")
    dtype: str = _param("float32", _choice(*DTYPES), "dtype the features are stored in (float16 halves the file)")
    compute: str = _param("float32", _choice(*COMPUTE_DTYPES), "dtype the conv part computes in (bfloat16, float16: Keras mixed precision)")
    flip: bool = _param(False, None, "also cache horizontally flipped copies of the train images")


@dataclass(frozen=True)
class BnParams:
    layers: str = _param("dense", _choice(*BN_LAYERS), "where to insert calibrated BatchNormalization: after hidden dense layers, conv layers, or both")
    position: str = _param("after_activation", _choice(*BN_POSITIONS), "BN after the ReLU (the notebook's) or between the linear part and the ReLU (Ioffe and Szegedy's)")
    batch_size: int = _param(256, _at_least(1), "feature rows per batch when measuring statistics")
    conv_images: typing.Optional[int] = _param(None, _at_least(1), "train images whose conv maps calibrate conv BN; null: all sampled")


@dataclass(frozen=True)
class FinetuneParams:
    epochs: int = _param(3, _at_least(1), "epochs over the cached train features")
    batch_size: int = _param(64, _at_least(1), "batch size")
    lr: float = _param(0.0001, _positive, "Adam learning rate")
    dropout: float = _param(0.5, _dropout, "rate of the dense part's Dropout layers while fine-tuning")
    seed: int = _param(0, _at_least(0), "seed of shuffling, dropout and initialization")
    shuffle_buffer: int = _param(4096, _at_least(1), "rows held for shuffling while streaming from HDF5")
    compute: str = _param("float32", _choice(*COMPUTE_DTYPES), "dtype of the training math (bfloat16, float16: Keras mixed precision, float16 with loss scaling)")


@dataclass(frozen=True)
class TransferParams:
    root: str = _param("data/transfer", _non_empty, "image folder of the new task (ImageNet layout), e.g. your cats and dogs")
    train: str = _param("head", _choice(*TRANSFER_TRAIN), "head: train only the new softmax layer; dense: all dense layers")
    lrs: tuple[float, ...] = _param((1e-3, 1e-2, 1e-1), _positive, "learning rates compared with and without BN")
    seeds: tuple[int, ...] = _param((0,), _at_least(0), "seeds each learning rate is trained with")
    epochs: int = _param(10, _at_least(1), "epochs per training run")
    batch_size: int = _param(16, _at_least(1), "batch size")


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    demo: DemoParams = field(default_factory=DemoParams)
    model: ModelParams = field(default_factory=ModelParams)
    sample: SampleParams = field(default_factory=SampleParams)
    features: FeaturesParams = field(default_factory=FeaturesParams)
    bn: BnParams = field(default_factory=BnParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    transfer: TransferParams = field(default_factory=TransferParams)


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads `1e-4` as a string (YAML 1.1); DVC and `dvc exp run -S` read it as a number (YAML 1.2)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?(?:[eE][-+]?\d+)$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _describe(value) -> str:
    return "null" if value is None else repr(value)


def _coerce(key: str, value, annotation, check, source: str):
    """Check `value` against the field's type and constraint; return it (ints widen to floats).

    A tuple[T, ...] field takes a non-empty YAML list whose items are each checked as a T.
    """
    if typing.get_origin(annotation) is tuple:
        item_type = typing.get_args(annotation)[0]
        if not isinstance(value, list) or not value:
            raise ParamsError(f"{source}: {key}: expected a non-empty list, got {_describe(value)}")
        return tuple(_coerce(f"{key}[{i}]", item, item_type, check, source) for i, item in enumerate(value))
    optional = typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation)
    base = next(a for a in typing.get_args(annotation) if a is not type(None)) if optional else annotation
    if value is None:
        if optional:
            return None
        raise ParamsError(f"{source}: {key}: expected {base.__name__}, got null")
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base is int and isinstance(value, bool) or not isinstance(value, base):
        kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[base]
        raise ParamsError(f"{source}: {key}: expected {kind}{' or null' if optional else ''}, got {_describe(value)}")
    problem = check(value) if check else None
    if problem:
        raise ParamsError(f"{source}: {key}: expected {problem}, got {_describe(value)}")
    return value


def _unknown(key: str, known: list[str], source: str) -> ParamsError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return ParamsError(f"{source}: unknown key {key}{hint}; known: {', '.join(known)}")


def _build(cls, raw, prefix: str, source: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: {prefix or 'top level'}: expected a mapping of keys, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    for key in raw:
        if key not in known:
            raise _unknown(f"{prefix}{key}", known, source)
    values = {}
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        if f.default_factory is not MISSING:  # a section
            values[f.name] = _build(hints[f.name], raw.get(f.name), f"{key}.", source)
        elif f.name in raw:
            values[f.name] = _coerce(key, raw[f.name], hints[f.name], f.metadata.get("check"), source)
    return cls(**values)


def _check_combinations(params: Params, source: str) -> None:
    digits = params.demo.classes
    if len(set(digits)) != len(digits) or not 2 <= len(digits) <= 8:
        raise ParamsError(f"{source}: demo.classes: expected 2 to 8 distinct digits (the others, at least 2, make "
                          f"the transfer task), got {list(digits)}")
    model = params.model
    if model.source in ("demo", "vgg16"):
        if model.preprocess is not None:
            raise ParamsError(f"{source}: model.preprocess: expected null for model.source={model.source} "
                              f"(it fixes its own preprocessing), got {model.preprocess!r}")
    elif model.preprocess not in PREPROCESS_MODES:
        raise ParamsError(f"{source}: model.preprocess: expected one of {', '.join(PREPROCESS_MODES)} for a model "
                          f"file, got {_describe(model.preprocess)}")
    if model.source != "vgg16" and model.weights is not None:
        raise ParamsError(f"{source}: model.weights: expected null unless model.source=vgg16, got {model.weights!r}")


def parse_params(raw, source: str = "params.yaml") -> Params:
    params = _build(Params, raw, "", source)
    _check_combinations(params, source)
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole params file; raise ParamsError naming the key on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ParamsError(f"{path}: cannot read params: {error.strerror}") from None
    try:
        raw = yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    return parse_params(raw, str(path))


def documented_params() -> list[tuple[str, object, str]]:
    """(key, default, description) for every param: docs/params.md's table is checked against this."""
    rows = []
    for section in fields(Params):
        cls = typing.get_type_hints(Params)[section.name]
        for f in fields(cls):
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            rows.append((f"{section.name}.{f.name}", default, f.metadata["doc"]))
    return rows


def documented_choices() -> dict[str, tuple]:
    """Every enumerated or boolean key and its documented values: the choice matrix (tests/test_choices.py) must
    run each one."""
    choices = {}
    for section in fields(Params):
        cls = typing.get_type_hints(Params)[section.name]
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            values = (False, True) if hints[f.name] is bool else f.metadata["choices"]
            if values:
                choices[f"{section.name}.{f.name}"] = values
    return choices
