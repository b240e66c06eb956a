"""One worker of the soak test: trains a small dense part on a feature file for at least `SOAK_SECONDS` (through
the stages' own pieces: `feed.Feed`, `training.Trainer`, `train_epochs`), under the strategy the environment gives,
sampling its own threads, resident memory and open files every second.

    python tests/soak_worker.py FEATURES.h5 OUT_DIR

Writes OUT_DIR/soak-<worker index>.json: the samples (time, epoch, threads, rss_kib, fds), the steps trained and
the seconds it ran. With `SOAK_HANG` set, worker 1 hangs after its first epoch (a stuck filesystem, say: alive,
never joining the next collective). The chief decides after each epoch whether to go on (a broadcast), so every worker trains the
same steps.
"""

import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from vggbn import console

console.quiet_tensorflow_import()  # as the stages do: no start-up chatter from a worker (bench/gpu.py runs it)

from vggbn.cluster import distribute  # noqa: E402

distribute.strategy()  # before TensorFlow runs anything

import keras  # noqa: E402

from vggbn.numerics import training  # noqa: E402
from vggbn.runner import stage  # noqa: E402
from vggbn.storage import feed, features  # noqa: E402

FEATURES, OUT = Path(sys.argv[1]), Path(sys.argv[2])
SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
BATCH = 16


def sample(epoch: int) -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {"time": time.monotonic(), "epoch": epoch, "threads": int(status["Threads"]),
            "rss_kib": int(status["VmRSS"].split()[0]), "fds": len(list(Path("/proc/self/fd").iterdir()))}


def main():
    index, workers = distribute.worker()
    strategy = distribute.strategy()
    with features.open_features(FEATURES) as file:
        rows, width = file["features"].shape[0], file["features"].shape[1]
    with strategy.scope():
        model = keras.Sequential([keras.Input((width,)), keras.layers.Dense(64, activation="relu", name="fc1"),
                                  keras.layers.BatchNormalization(name="fc1_bn"),
                                  keras.layers.Dense(10, activation="softmax", name="predictions")])
        model = training.for_training(model, BATCH)
        training.compile_for_training(model, 1e-3)
    trainer = training.Trainer(model, strategy, (index, workers))
    train_feed = feed.Feed(FEATURES, BATCH, 256, worker=(index, workers), dtype=None, tensors=True)
    samples, history, done = [], [], threading.Event()

    def sampler():
        while not done.wait(1.0):
            samples.append(sample(len(history)))
    threading.Thread(target=sampler, daemon=True).start()
    start, steps = time.monotonic(), math.ceil(rows / BATCH)
    while True:
        training.train_epochs(trainer, epochs=len(history) + 1, history=history, steps=steps,
                              train_batches=train_feed.shares,
                              valid_batches=lambda: features.iter_shares(FEATURES, BATCH, distribute.my_share),
                              hooks=training.EpochHooks(show_progress=False))
        samples.append(sample(len(history)))
        if index == 1 and os.environ.get("SOAK_HANG"):  # alive (TensorFlow's heartbeats go on) but stuck
            time.sleep(3600)
        if not distribute.broadcast(np.array([time.monotonic() - start < SECONDS]))[0]:
            break
    done.set()
    (OUT / f"soak-{index}.json").write_text(json.dumps({
        "samples": samples, "steps": steps * len(history), "epochs": len(history),
        "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    sys.exit(stage.exit_status(main))  # a failure: one line naming the worker, its Slurm step ended
