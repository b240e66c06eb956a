"""The demo's digits, shipped with the package (`digits/digits.csv.gz`, with their license in `digits/LICENSE`): the
1,797 8x8 handwritten digits scikit-learn bundles, read without scikit-learn (nor its scipy and joblib, which Keras
would otherwise import at every start)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DIGITS_FILE = Path(__file__).with_name("digits") / "digits.csv.gz"


def load_digits(path: str | Path = DIGITS_FILE) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels): float64 (n, 8, 8) pixel counts 0..16 and int64 (n,) digits, as scikit-learn's
    `load_digits()` gives `images` and `target` (one CSV row an image: 64 values, then the label)."""
    with gzip.open(path, "rt") as file:
        table = np.loadtxt(file, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
