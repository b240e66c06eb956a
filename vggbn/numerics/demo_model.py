"""The embedded demo's classifier: a small VGG-style model trained on the demo folder without batch
normalization, standing in for VGG16 and ImageNet, which cannot be downloaded here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vggbn.numerics import distribute, images, models
from vggbn.storage.files import StageResult
from vggbn.numerics.training import Trainer, compile_for_training, live_logger, seed_everything, train_epochs

DEMO_PREPROCESS = "caffe"  # the same preprocessing as VGG16, so the demo exercises the same path
DEMO_RESIZE = "squash"


def _load_split(root: Path, split: str, classes: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed images and labels of one split (the demo holds at most 1,797 images of 32x32: in memory)."""
    paths, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((root / split / name).iterdir()):
            paths.append(str(path))
            labels.append(index)
    batch = images.load_batch(paths, size=(size, size), resize=DEMO_RESIZE, preprocess=DEMO_PREPROCESS)
    return batch, np.asarray(labels, dtype=np.int32)


def run_demo_model(*, root: str | Path, out_path: str | Path, size: int, epochs: int, batch_size: int, lr: float,
                   seed: int, live_dir: str | Path | None = None) -> StageResult:
    """The demo_model stage: train the demo VGG-style classifier on `root`'s train split and save it to `out_path`;
    its valid loss and accuracy. Per-epoch curves go to `live_dir` through dvclive's Keras callback.
    """
    strategy = distribute.strategy()  # before TensorFlow runs anything (a multi-worker strategy must be first)
    root = Path(root)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    x_train, y_train = _load_split(root, "train", classes, size)
    x_valid, y_valid = _load_split(root, "valid", classes, size)
    seed_everything(seed)
    with strategy.scope():
        model = models.build_demo_classifier(input_size=size, num_classes=len(classes), seed=seed)
        compile_for_training(model, lr)
        trainer = Trainer(model, strategy)
    live = live_logger(live_dir, []) if live_dir and distribute.is_chief() else None
    history: list[dict] = []

    def shuffled(epoch):  # a fresh seeded order each epoch: every worker draws the same global batches
        order = np.random.default_rng([seed, epoch]).permutation(len(y_train))
        return ((x_train[order[i:i + batch_size]], y_train[order[i:i + batch_size]])
                for i in range(0, len(order), batch_size))

    def in_order(x, y):
        return ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size))

    train_epochs(trainer, epochs=epochs, history=history, train_batches=shuffled,
                 steps=-(-len(y_train) // batch_size), valid_batches=lambda: in_order(x_valid, y_valid), live=live,
                 show_progress=distribute.is_chief())
    if live:
        live.end()
    models.save_model(trainer.finish(), out_path)
    last = history[-1]
    return StageResult({"valid_loss": last["val_loss"], "valid_accuracy": last["val_accuracy"],
                        "train_images": int(len(y_train)), "valid_images": int(len(y_valid)),
                        "params": model.count_params(), **distribute.describe()})
