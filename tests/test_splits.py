"""The demo's digits and split without scikit-learn: the shipped file holds scikit-learn's digits, and the
stratified split draws what scikit-learn's train_test_split draws (compared wherever scikit-learn is installed)."""

import numpy as np
import pytest

from vggbn.numerics.splits import stratified_split
from vggbn.storage.digits import DIGITS_FILE, load_digits


def test_the_shipped_digits_are_1797_images_of_ten_digits_with_their_license():
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and images.min() == 0 and images.max() == 16
    assert np.array_equal(np.bincount(labels)[:3], [178, 182, 177]) and set(labels.tolist()) == set(range(10))
    assert "CC BY 4.0" in (DIGITS_FILE.parent / "LICENSE").read_text()


@pytest.mark.parametrize("fraction, seed", [(0.2, 0), (0.2, 7), (0.35, 1), (0.5, 3)])
def test_the_split_is_scikit_learns(fraction, seed):
    sklearn = pytest.importorskip("sklearn.model_selection")
    _, labels = load_digits()
    base = np.flatnonzero(np.isin(labels, [0, 1, 2, 3, 4, 5, 6]))
    expected = sklearn.train_test_split(base, test_size=fraction, random_state=seed, stratify=labels[base])
    got = stratified_split(base, labels[base], fraction, seed)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_the_split_keeps_each_class_share():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train, valid = stratified_split(np.arange(100) + 1000, labels, 0.3, 0)
    assert len(valid) == 30 and len(train) == 70 and not set(train) & set(valid)
    assert np.array_equal(np.bincount(labels[valid - 1000]), [15, 9, 6])
    with pytest.raises(ValueError, match="cannot split 4 items of 2 classes"):
        stratified_split(np.arange(4), [0, 0, 0, 1], 0.5, 0)
