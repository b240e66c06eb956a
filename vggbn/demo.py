"""The embedded demo's images: an ImageNet-layout folder from scikit-learn's bundled digits, so `dvc repro`
needs nothing from outside. No TensorFlow here; the demo classifier is trained in `demo_model`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vggbn.atomic import atomic_path

def digits_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits (ships with the package) as uint8 RGB images of size x size, and labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.round(digits.images * (255 / 16)).astype(np.uint8)  # values are 0..16
    images = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BICUBIC).convert("RGB"))
                       for g in gray])
    return images, digits.target.astype(np.int64)


def write_digits_folder(out: str | Path, *, size: int, valid_fraction: float, seed: int) -> dict:
    """Write `out/{train,valid}/<digit>/<index>.png` with a seeded split stratified by digit; returns counts."""
    from PIL import Image
    from sklearn.model_selection import train_test_split

    images, labels = digits_images(size)
    indices = np.arange(len(labels))
    train, valid = train_test_split(indices, test_size=valid_fraction, random_state=seed, stratify=labels)
    with atomic_path(out) as tmp:
        for split, members in (("train", train), ("valid", valid)):
            for digit in np.unique(labels):
                (tmp / split / str(digit)).mkdir(parents=True)
            for index in sorted(members):
                Image.fromarray(images[index]).save(tmp / split / str(labels[index]) / f"{index:04d}.png")
    return {"train_images": int(len(train)), "valid_images": int(len(valid)), "classes": int(len(np.unique(labels)))}
