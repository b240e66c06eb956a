"""Streaming per-unit mean and variance that merge across batches and shards (Chan, Golub and LeVeque 1979).

Accumulators are float64: a float32 running sum of activations with a large offset loses the digits that the
variance lives in. numpy only, no TensorFlow.
"""

from __future__ import annotations

import numpy as np


class Moments:
    """Count, mean and sum of squared deviations (M2) of each column, updated batch by batch."""

    def __init__(self, width: int):
        self.count = 0
        self.mean = np.zeros(width, dtype=np.float64)
        self.m2 = np.zeros(width, dtype=np.float64)

    @property
    def width(self) -> int:
        return self.mean.shape[0]

    def update(self, batch) -> "Moments":
        """Add the rows of `batch`; any leading axes (batch, height, width) are pooled per last-axis unit."""
        rows = np.asarray(batch, dtype=np.float64).reshape(-1, self.width)
        if rows.shape[0]:
            mean = rows.mean(axis=0)
            m2 = np.square(rows - mean).sum(axis=0)
            self._combine(rows.shape[0], mean, m2)
        return self

    def merge(self, other: "Moments") -> "Moments":
        """Fold in moments computed elsewhere (another shard or worker)."""
        if other.width != self.width:
            raise ValueError(f"cannot merge moments of width {other.width} into width {self.width}")
        if other.count:
            self._combine(other.count, other.mean, other.m2)
        return self

    def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + np.square(delta) * (n_a * n_b / n)
        self.count = n

    @property
    def variance(self) -> np.ndarray:
        """Population variance (ddof=0), what BatchNormalization normalizes by."""
        if not self.count:
            raise ValueError("no rows seen: the variance of an empty sample is undefined")
        return self.m2 / self.count
