"""A seeded train/valid split stratified by class, numpy only.

It draws exactly what scikit-learn's `train_test_split(indices, test_size=f, random_state=seed, stratify=labels)`
(its `StratifiedShuffleSplit`) draws, so the demo's folders stayed the same when scikit-learn left the
dependencies: `tests/test_splits.py` compares the two wherever scikit-learn is installed.
"""

from __future__ import annotations

import math

import numpy as np


def _approximate_mode(class_counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per class, how many of `draws` it gets: the floor of its share, then one more each for the largest
    remainders (ties broken at random), until the total is `draws`."""
    continuous = class_counts / class_counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (candidates,) = np.where(remainder == value)
            now = min(len(candidates), need)
            floored[rng.choice(candidates, size=now, replace=False)] += 1
            need -= now
            if need == 0:
                break
    return floored.astype(int)


def stratified_split(items, labels, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid): `items` split so that each class keeps about its share in both, `ceil(valid_fraction * n)`
    of them in valid, both in a seeded random order."""
    items, labels = np.asarray(items), np.asarray(labels)
    if len(items) != len(labels):
        raise ValueError(f"Expected one label per item. Received: {len(labels)} labels for {len(items)} items")
    if not 0 < valid_fraction < 1:
        raise ValueError(f"Expected `valid_fraction` between 0 and 1. Received: valid_fraction={valid_fraction}")
    n_valid = math.ceil(valid_fraction * len(items))
    n_train = len(items) - n_valid
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2 or min(n_train, n_valid) < len(classes):
        raise ValueError(f"cannot split {len(items)} items of {len(classes)} classes (the smallest has "
                         f"{counts.min()}) so that both parts hold every class")
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)  # the legacy generator: scikit-learn's draws
    train_counts = _approximate_mode(counts, n_train, rng)
    valid_counts = _approximate_mode(counts - train_counts, n_valid, rng)
    train, valid = [], []
    for index, count in enumerate(counts):
        shuffled = members[index].take(rng.permutation(count), mode="clip")
        train.extend(shuffled[:train_counts[index]])
        valid.extend(shuffled[train_counts[index]:train_counts[index] + valid_counts[index]])
    return items[rng.permutation(train)], items[rng.permutation(valid)]
