"""Stage demo_model: train the demo's small VGG-style classifier on the demo folder without batch normalization,
standing in for VGG16 and ImageNet, which cannot be downloaded here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vggbn.runner import stage
from vggbn.storage.results import StageResult

DEMO_PREPROCESS = "caffe"  # the same preprocessing as VGG16, so the demo exercises the same path
DEMO_RESIZE = "squash"


def _load_split(root: Path, split: str, classes: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed images and labels of one split (the demo holds at most 1,797 images of 32x32: in memory)."""
    from vggbn.numerics import images

    paths, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((root / split / name).iterdir()):
            paths.append(str(path))
            labels.append(index)
    batch = images.load_batch(paths, size=(size, size), resize=DEMO_RESIZE, preprocess=DEMO_PREPROCESS)
    return batch, np.asarray(labels, dtype=np.int32)


def run(paths, params) -> StageResult:
    """Train the demo VGG-style classifier on `--data`'s train split and save it to `--out`; its valid loss and
    accuracy. Per-epoch curves go to `--live` through dvclive."""
    demo = params.demo
    size, epochs, batch_size, lr, seed = demo.size, demo.epochs, demo.batch_size, demo.lr, demo.seed
    root, out_path, live_dir = paths.data, paths.out, paths.live
    from vggbn.numerics import models
    from vggbn.cluster import distribute
    from vggbn.numerics.training import (EpochHooks, Trainer, compile_for_training, live_logger, seed_everything,
                                         train_epochs)

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
    live = live_logger(live_dir, []) if live_dir else None
    history: list[dict] = []

    def shuffled(epoch):  # a fresh seeded order each epoch: every worker draws the same global batches
        order = np.random.default_rng([seed, epoch]).permutation(len(y_train))
        return ((x_train[order[i:i + batch_size]], y_train[order[i:i + batch_size]])
                for i in range(0, len(order), batch_size))

    def in_order(x, y):
        return ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size))

    train_epochs(trainer, epochs=epochs, history=history, train_batches=shuffled,
                 steps=-(-len(y_train) // batch_size), valid_batches=lambda: in_order(x_valid, y_valid),
                 hooks=EpochHooks(live=live, show_progress=distribute.is_chief()))
    if live:
        live.end()
    models.save_model(trainer.finish(), out_path)
    last = history[-1]
    return StageResult({"valid_loss": last["val_loss"], "valid_accuracy": last["val_accuracy"],
                        "train_images": int(len(y_train)), "valid_images": int(len(y_valid)),
                        "params": model.count_params(), **distribute.describe()})


if __name__ == "__main__":
    stage.main(__doc__, run, runs_model=True, data="the demo image folder", out="the trained classifier (.keras)",
               live="dvclive folder for the per-epoch curves", metrics="JSON with the valid accuracy")
