"""The embedded demo's images: an ImageNet-layout folder from scikit-learn's bundled digits, so `dvc repro`
needs nothing from outside. No TensorFlow here; the demo classifier is trained in `demo_model`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vggbn.storage.atomic import atomic_path
from vggbn.storage.files import StageResult

def digits_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits (ships with the package) as uint8 RGB images of size x size, and labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.round(digits.images * (255 / 16)).astype(np.uint8)  # values are 0..16
    images = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BICUBIC).convert("RGB"))
                       for g in gray])
    return images, digits.target.astype(np.int64)


def _write_split_folders(out: Path, images: np.ndarray, labels: np.ndarray, splits: dict) -> None:
    """`out/<split>/<digit>/<index>.png` for each split's indices; every digit gets a folder in every split."""
    from PIL import Image

    digits = sorted({int(labels[i]) for members in splits.values() for i in members})
    with atomic_path(out) as tmp:
        for split, members in splits.items():
            for digit in digits:
                (tmp / split / str(digit)).mkdir(parents=True)
            for index in sorted(members):
                Image.fromarray(images[index]).save(tmp / split / str(labels[index]) / f"{index:04d}.png")


def run_demo_data(*, demo_out: str | Path, transfer_out: str | Path, size: int, valid_fraction: float, seed: int,
                  classes: Sequence[int], transfer_train: int) -> StageResult:
    """Two ImageNet-layout folders from the digits: the demo's "ImageNet" and a transfer task.

    `demo_out` holds the digits in `classes`, split train/valid with a seeded split stratified by digit. The
    held-back digits make `transfer_out`, the new task to transfer to from few examples: `transfer_train` train
    images per digit (seeded), the rest for validation. The demo_data stage; its metrics are the counts.
    """
    from sklearn.model_selection import train_test_split

    images, labels = digits_images(size)
    base = np.flatnonzero(np.isin(labels, list(classes)))
    train, valid = train_test_split(base, test_size=valid_fraction, random_state=seed, stratify=labels[base])
    _write_split_folders(Path(demo_out), images, labels, {"train": train, "valid": valid})
    rng = np.random.default_rng(seed)
    held_back = sorted(set(labels.tolist()) - set(classes))
    transfer = {"train": [], "valid": []}
    for digit in held_back:
        members = rng.permutation(np.flatnonzero(labels == digit))
        transfer["train"] += members[:transfer_train].tolist()
        transfer["valid"] += members[transfer_train:].tolist()
    _write_split_folders(Path(transfer_out), images, labels, transfer)
    return StageResult({"train_images": len(train), "valid_images": len(valid), "classes": len(classes),
                        "transfer_train_images": len(transfer["train"]),
                        "transfer_valid_images": len(transfer["valid"]), "transfer_classes": len(held_back)})
