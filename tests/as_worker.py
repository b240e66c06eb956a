"""One worker of the distributed tests: the image pass, the conv statistics and a fine-tuning of a mini VGG, under
the strategy the environment gives (`vggbn.cluster.distribute`), run as a real process (alone, or by `vggbn.runner.launch`).

    python tests/as_worker.py WORKSPACE LOGICAL_CPUS

WORKSPACE holds `model.keras` and `images/` (made by the test); the chief writes `features.h5`, `result.npz` and
`result.json` there; it compares transfer in head mode (its work folder `work/transfer`); it trains `$EPOCHS` epochs (default 2), resuming from the checkpoint an earlier run left; with
`$PAUSE_AFTER_EPOCH` = k, it sleeps once epoch k's checkpoint is saved (for a test to kill it mid-training). Every worker records each file it opened for writing, renamed or removed under WORKSPACE (a
Python audit hook) in `$WRITES_DIR/writes-<index>.json`, outside the workspace. LOGICAL_CPUS > 1 splits the CPU
into that many logical devices first (for `VGGBN_STRATEGY=mirrored`).
"""

import json
import logging
import os
import sys
import time
from pathlib import Path

WORKSPACE = Path(sys.argv[1]).resolve()
WRITES: list[str] = []


def record(event, args):
    """Writes under the workspace: open() for writing, os.rename/replace/remove/mkdir/rmdir."""
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path, mode = args[0], args[1]
        if isinstance(mode, str) and any(flag in mode for flag in "wax+"):
            touch(path)
        elif isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            touch(path)
    elif event in ("os.rename", "os.replace"):
        touch(args[0])
        touch(args[1])
    elif event in ("os.remove", "os.mkdir", "os.rmdir", "os.truncate", "shutil.rmtree"):
        touch(args[0])


def touch(path):
    try:
        resolved = Path(os.fsdecode(path)).resolve()
    except (TypeError, ValueError):
        return
    if resolved.is_relative_to(WORKSPACE):
        WRITES.append(str(resolved.relative_to(WORKSPACE)))


sys.addaudithook(record)
FEED_BYTES = [0]  # bytes the training feed read from the feature file (feed._preadv: its only read)
from vggbn.storage import feed  # noqa: E402

_preadv = feed._preadv


def counted_preadv(fd, iovecs, count, offset):
    read = _preadv(fd, iovecs, count, offset)
    FEED_BYTES[0] += max(read, 0)
    return read


feed._preadv = counted_preadv

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

logical = int(sys.argv[2])
if logical > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical)

from vggbn.numerics import extract, models, surgery, transfer  # noqa: E402
from vggbn.cluster import distribute  # noqa: E402
from vggbn.storage import features  # noqa: E402
from vggbn.numerics.feature_training import Checkpoints, TrainingPlan, train_on_features  # noqa: E402
from vggbn.numerics.images import ImageInput  # noqa: E402


def pause_after_checkpoint(epoch_to_pause: int) -> None:
    from vggbn.numerics import feature_training

    save = feature_training._save_checkpoint

    def saved_then_paused(model, work_dir, epoch, history):
        save(model, work_dir, epoch, history)
        if epoch == epoch_to_pause:
            time.sleep(600)

    feature_training._save_checkpoint = saved_then_paused


def main():
    if os.environ.get("PAUSE_AFTER_EPOCH"):
        pause_after_checkpoint(int(os.environ["PAUSE_AFTER_EPOCH"]))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("vggbn.numerics.feature_training").setLevel(logging.INFO)  # "resuming from the checkpoint after epoch k"
    model = models.load_model_file(WORKSPACE / "model.keras")
    conv, dense = models.split(model, "block2_pool")
    paths = sorted(str(p.relative_to(WORKSPACE / "images")) for p in (WORKSPACE / "images").rglob("*.png"))
    labels = [int(Path(p).parent.name) for p in paths]
    inputs = ImageInput(str(WORKSPACE / "images"), 6, "squash", "caffe")  # 6 rows a batch: not a multiple of 4
    stats = extract.extract_split(conv, inputs,
                                  features.FeatureRows.of(paths, labels, [f"h{i}" for i in range(len(paths))]),
                                  extract.Extraction("m"), WORKSPACE / "features.h5", WORKSPACE / "work" / "features")
    moments = surgery.measure_images(conv, inputs, paths, surgery.conv_names(conv))
    # as the bn_stats stage reads them: each worker its own rows of each batch under a multi-worker strategy
    if distribute.multi_worker():
        shares = features.iter_shares(WORKSPACE / "features.h5", 7, distribute.my_share)
        dense_moments = surgery.measure(dense, ((x, count) for x, _, count in shares), shared=True)
    else:
        dense_moments = surgery.measure(dense, (x for x, _ in features.iter_batches(WORKSPACE / "features.h5", 7)))
    FEED_BYTES[0] = 0
    with_bn = surgery.insert_bn(dense, {name: (m.mean, m.variance) for name, m in dense_moments.items()})
    trained = train_on_features(with_bn, TrainingPlan(epochs=int(os.environ.get("EPOCHS", "2")), batch_size=10, lr=1e-3,
                                dropout=0.5, seed=0, shuffle_buffer=16), train_path=WORKSPACE / "features.h5",
                                valid_path=WORKSPACE / "features.h5",
                                checkpoints=Checkpoints(WORKSPACE / "work" / "train", {"test": 1}),
                                live_dir=WORKSPACE / "live")
    report = transfer.compare_transfer({"start": dense}, transfer.TransferGrid("head", [1e-2], [0], 1, 10),
                                       train_path=WORKSPACE / "features.h5", valid_path=WORKSPACE / "features.h5",
                                       num_classes=3, work_dir=WORKSPACE / "work" / "transfer")
    if distribute.is_chief():
        with features.open_features(WORKSPACE / "features.h5") as file:
            rows = file["features"][:]
        arrays = {"features": rows, **{f"weight{i}": w for i, w in enumerate(trained.model.get_weights())}}
        for name, m in {**moments, **dense_moments}.items():
            arrays[f"{name}_mean"], arrays[f"{name}_variance"] = m.mean, m.variance
        np.savez(WORKSPACE / "result.npz", **arrays)
        (WORKSPACE / "result.json").write_text(json.dumps({"stats": stats, "history": trained.history,
                                                           "transfer": report,
                                                           **distribute.describe()}))


try:
    main()
finally:
    out = Path(os.environ["WRITES_DIR"]) / f"writes-{distribute.cluster().index}.json"
    out.write_text(json.dumps(sorted(set(WRITES))))
    (out.parent / f"feed-bytes-{distribute.cluster().index}.json").write_text(json.dumps(FEED_BYTES[0]))
