"""The 1,000 ILSVRC-2012 classes in the order of a Keras ImageNet classifier's outputs.

Keras downloads `imagenet_class_index.json` only when `decode_predictions` is first called; the pipeline runs
offline, so the package ships the same table as `imagenet_classes.txt`: line i is output i, written as
`wnid<TAB>name` with Keras' names verbatim (index 0 is n01440764 tench, 999 is n15075141 toilet_tissue; the
WordNet ids are in sorted order, the order of ImageNet's class folders). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import functools
from importlib import resources

CLASSES_FILE = "imagenet_classes.txt"


@functools.lru_cache(maxsize=1)
def _table() -> tuple[tuple[str, str], ...]:
    text = resources.files(__package__).joinpath(CLASSES_FILE).read_text(encoding="utf-8")
    return tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line)


def imagenet_wnids() -> list[str]:
    """WordNet ids of the 1,000 classes, index i being a Keras ImageNet classifier's output i."""
    return [wnid for wnid, _ in _table()]


def imagenet_names() -> dict[str, str]:
    """Keras' readable name of each WordNet id (e.g. 'n01440764' -> 'tench'), in output order."""
    return dict(_table())
