"""Loss and accuracy of predicted probabilities, accumulated batch by batch. numpy only."""

from __future__ import annotations

import numpy as np

LOSS_CLIP = 1e-7  # Keras clips probabilities to [eps, 1 - eps] in its crossentropy


class Score:
    """Mean crossentropy and accuracy over every batch added."""

    def __init__(self):
        self.loss_sum, self.correct, self.count = 0.0, 0, 0

    def add(self, probabilities: np.ndarray, labels: np.ndarray) -> "Score":
        labels = np.asarray(labels, dtype=np.int64)
        picked = probabilities[np.arange(len(labels)), labels].astype(np.float64)
        self.loss_sum -= float(np.log(np.clip(picked, LOSS_CLIP, 1 - LOSS_CLIP)).sum())
        self.correct += int((probabilities.argmax(axis=1) == labels).sum())
        self.count += len(labels)
        return self

    def result(self) -> dict:
        if not self.count:
            raise ValueError("no samples were scored")
        return {"loss": self.loss_sum / self.count, "accuracy": self.correct / self.count}
