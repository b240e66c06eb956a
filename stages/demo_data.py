"""Stage demo_data: write the demo's image folders (ImageNet layout) from the digits shipped with vggbn: the
demo classifier's digits, and the held-back digits as a transfer task. No TensorFlow here; the demo classifier is
trained in the demo_model stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vggbn.runner import stage
from vggbn.storage.atomic import atomic_path
from vggbn.storage.results import StageResult


def digits_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits (vggbn.storage.digits) as uint8 RGB images of size x size, and labels."""
    from PIL import Image

    from vggbn.storage.digits import load_digits

    pixels, labels = load_digits()
    gray = np.round(pixels * (255 / 16)).astype(np.uint8)  # values are 0..16
    images = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BICUBIC).convert("RGB"))
                       for g in gray])
    return images, labels


def write_split_folders(out: Path, images: np.ndarray, labels: np.ndarray, splits: dict) -> None:
    """`out/<split>/<digit>/<index>.png` for each split's indices; every digit gets a folder in every split."""
    from PIL import Image

    digits = sorted({int(labels[i]) for members in splits.values() for i in members})
    with atomic_path(out) as tmp:
        for split, members in splits.items():
            for digit in digits:
                (tmp / split / str(digit)).mkdir(parents=True)
            for index in sorted(members):
                Image.fromarray(images[index]).save(tmp / split / str(labels[index]) / f"{index:04d}.png")


def run(paths, params) -> StageResult:
    """Two ImageNet-layout folders from the digits: the demo's "ImageNet" and a transfer task.

    `--out` holds the digits in `demo.classes`, split train/valid with a seeded split stratified by digit. The
    held-back digits make `--transfer-out`, the new task to transfer to from few examples: `demo.transfer_train`
    train images per digit (seeded), the rest for validation. Its metrics are the counts.
    """
    demo = params.demo
    size, valid_fraction, seed, classes, transfer_train = (demo.size, demo.valid_fraction, demo.seed, demo.classes,
                                                           demo.transfer_train)
    demo_out, transfer_out = paths.out, paths.transfer_out
    from vggbn.numerics.splits import stratified_split

    images, labels = digits_images(size)
    base = np.flatnonzero(np.isin(labels, list(classes)))
    train, valid = stratified_split(base, labels[base], valid_fraction, seed)
    write_split_folders(Path(demo_out), images, labels, {"train": train, "valid": valid})
    rng = np.random.default_rng(seed)
    held_back = sorted(set(labels.tolist()) - set(classes))
    transfer = {"train": [], "valid": []}
    for digit in held_back:
        members = rng.permutation(np.flatnonzero(labels == digit))
        transfer["train"] += members[:transfer_train].tolist()
        transfer["valid"] += members[transfer_train:].tolist()
    write_split_folders(Path(transfer_out), images, labels, transfer)
    return StageResult({"train_images": len(train), "valid_images": len(valid), "classes": len(classes),
                        "transfer_train_images": len(transfer["train"]),
                        "transfer_valid_images": len(transfer["valid"]), "transfer_classes": len(held_back)})


if __name__ == "__main__":
    stage.main(__doc__, run, out="image folder to write: <out>/{train,valid}/<digit>/*.png",
               transfer_out="image folder of the held-back digits", metrics="JSON with the image counts")
