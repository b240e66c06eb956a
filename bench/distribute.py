"""Benchmark of tf.distribute: conv_features and finetune as two local workers (one core each) against one process
with one core, and the communication share of a distributed training step.

Every measurement is a fresh set of processes started by `vggbn.runner.launch.start_local_workers` (this script with `--child`),
pinned to cores: one worker on one core, or two workers on a core each, under MultiWorkerMirroredStrategy on
127.0.0.1. The chief writes its timings to a JSON file.

- conv: `extract.extract_split` (JPEG files -> decode, resize, preprocess -> a VGG at VGG16's widths, random
  weights, at `--size` px (VGG16 itself at 224) -> chunked HDF5) over a quarter of the images, then over all of them; the rate is the difference in
  images over the difference in time, so start-up, tracing and the strategy's set-up cancel.
- conv_decode: the same pass where decoding binds, as on a GPU: full-size JPEGs (500x375, like ImageNet's) resized
  to 224, through a conv part cheap enough (three blocks of 4 filters, cut at block3_pool: `DECODE_FILTERS`)
  that decoding takes at least half of one process's time (`decode_share_of_time_1w`, from the decode-only rate
  of the same pipeline, measured alone). Under two workers each decodes only its own rows of each batch; each
  worker counts the images it asked tf.data to decode (`ImageInput.dataset`'s paths), and
  `conv_decode_share_2w` is the largest count over the pass's images.
- train: `training.Trainer` steps of that VGG's dense part (4096-wide, with calibrated BN, Adam) on a global batch of
  `--batch-size` rows, the batches read from a feature file by `features.shuffled_batches`; rows/s over timed steps
  after warm-up. Under two workers each computes half of each batch and the gradients are summed across them.
- read (in the train run at `--batch-size`): one epoch of `feature_training.train_on_features` (the finetune
  stage's training, at a global batch of `--small-batch-size`) with a small dense part; each worker counts the
  bytes its training feed read from the feature file (at `storage.feed._preadv`, the feed's only read): under two
  workers each reads only its rows of each global batch.
- comm: the all-reduce of a gradient-sized set of tensors alone, timed in the two-worker run, over the step's time.
  TensorFlow's CPU collectives go through gRPC (here about 0.25 GB/s on 127.0.0.1): the all-reduce of the dense
  part's 116 MB of gradients costs about as much as a step of 1,024 rows, so the scaling target is measured at a
  global batch of 8,192 (the figure at 1,024 is printed beside it).

    python3 bench/distribute.py [--images 1024] [--size 64] [--rows 16384] [--batch-size 8192]
                                [--small-batch-size 1024] [--steps 4] [--decode-images 1536]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CORES, print_figures, print_load, write_features, write_jpegs  # noqa: E402

CUT = "block5_pool"


def vgg16(size: int):
    """VGG16 (random weights) at `size` px, or a VGG at its widths with two convs a block below 224 px (Keras'
    VGG16 with its dense part needs 224)."""
    from vggbn.numerics import models

    if size == 224:
        return models.vgg16("none")
    return models.build_demo_classifier(input_size=size, num_classes=1000, filters=(64, 128, 256, 512, 512),
                                        dense_units=4096)


def child_conv(args, work: Path) -> dict:
    from vggbn.numerics import extract, models
    from vggbn.storage import features
    from vggbn.cluster import distribute
    from vggbn.numerics.images import ImageInput

    with distribute.strategy().scope():
        conv, _ = models.split(vgg16(args.size), CUT)
    paths = sorted(str(p.relative_to(work / "images")) for p in (work / "images").rglob("*.JPEG"))
    inputs = ImageInput(root=str(work / "images"), batch_size=32, resize="squash", preprocess="caffe")
    times = {}
    for label, count in (("quarter", len(paths) // 4), ("all", len(paths))):
        out = Path(tempfile.mkdtemp(prefix="bench-distribute-"))
        start = time.perf_counter()
        extract.extract_split(conv, inputs, features.FeatureRows.of(paths[:count], [0] * count, ["-"] * count),
                              extract.Extraction(label), out / "f.h5", out / "work")
        times[label] = (count, time.perf_counter() - start)
    (n1, t1), (n2, t2) = times["quarter"], times["all"]
    return {"conv_img_s": (n2 - n1) / (t2 - t1)}


DECODE_BATCH = 64  # images a batch (features.batch_size's default): one gather of outputs each
DECODE_SIZE, DECODE_FILTERS, DECODE_CUT = 224, (4, 4, 4), "block3_pool"  # 28 x 28 x 4 rows: 12.5 kB an image


def child_conv_decode(args, work: Path) -> dict:
    """Decode-bound image pass: full-size JPEGs -> 224 px -> a cheap conv part -> HDF5; the rate, and the images
    this worker decoded in the whole pass. One process also times decoding alone (the same tf.data pipeline)."""
    from vggbn.numerics import extract, models
    from vggbn.storage import features
    from vggbn.cluster import distribute
    from vggbn.numerics.images import ImageInput

    decoded = [0]
    dataset = ImageInput.dataset

    def counted(self, paths, *rest, **options):  # every image a worker decodes goes through here
        decoded[0] += len(paths)
        return dataset(self, paths, *rest, **options)

    ImageInput.dataset = counted
    with distribute.strategy().scope():
        conv, _ = models.split(models.build_demo_classifier(input_size=DECODE_SIZE, num_classes=10,
                                                            filters=DECODE_FILTERS, dense_units=16), DECODE_CUT)
    root = work / "photos"
    paths = sorted(str(p.relative_to(root)) for p in root.rglob("*.JPEG"))
    inputs = ImageInput(root=str(root), batch_size=DECODE_BATCH, resize="squash", preprocess="caffe")
    times = {}
    for label, count in (("warm-up", len(paths) // 4), ("quarter", len(paths) // 4), ("all", len(paths))):
        out = Path(tempfile.mkdtemp(prefix="bench-distribute-"))  # the warm-up traces every batch shape first
        decoded[0] = 0
        start = time.perf_counter()
        extract.extract_split(conv, inputs, features.FeatureRows.of(paths[:count], [0] * count, ["-"] * count),
                              extract.Extraction(label), out / "f.h5", out / "work")
        times[label] = (count, time.perf_counter() - start)
    (n1, t1), (n2, t2) = times["quarter"], times["all"]
    result = {"conv_decode_img_s": (n2 - n1) / (t2 - t1), "decoded": decoded[0], "images": n2}
    if not distribute.multi_worker():
        rounds = {}
        for label, count in (("warm-up", len(paths) // 4), ("quarter", len(paths) // 4), ("all", len(paths))):
            start = time.perf_counter()
            for _ in inputs.dataset(paths[:count], (DECODE_SIZE, DECODE_SIZE)):
                pass
            rounds[label] = (count, time.perf_counter() - start)
        (n1, t1), (n2, t2) = rounds["quarter"], rounds["all"]
        result["decode_img_s"] = (n2 - n1) / (t2 - t1)
    return result


def child_train(args, work: Path) -> dict:
    import numpy as np
    import tensorflow as tf

    from vggbn.numerics import models, surgery
    from vggbn.cluster import distribute
    from vggbn.storage import features
    from vggbn.numerics.training import Trainer, compile_for_training, seed_everything

    seed_everything(0)
    strategy = distribute.strategy()
    with strategy.scope():
        _, dense = models.split(vgg16(args.size), CUT)
        rng = np.random.default_rng(0)
        stats = {name: (rng.uniform(0, 1, 4096), rng.uniform(0.5, 2, 4096)) for name in surgery.hidden_dense_names(dense)}
        model = surgery.insert_bn(dense, stats)
        compile_for_training(model, 1e-4)
        trainer = Trainer(model, strategy)
    batches = features.shuffled_batches(work / "train.h5", args.batch_size, 4096, seed=0)
    batches = [next(batches) for _ in range(2)]
    for x, y in batches:  # warm-up: tracing, first touches of the Adam slots
        trainer.train_batch(x, y)
    start = time.perf_counter()
    for step in range(args.steps):
        trainer.train_batch(*batches[step % 2])
    step_s = (time.perf_counter() - start) / args.steps
    result = {"train_rows_s": args.batch_size / step_s, "step_ms": step_s * 1e3,
              "gradient_mb": sum(int(np.prod(v.shape)) * 4 for v in model.trainable_variables) / 1e6}
    if distribute.replicas() > 1:
        shapes = [v.shape for v in model.trainable_variables]

        @tf.function
        def all_reduce():
            def per_replica():
                return tf.distribute.get_replica_context().all_reduce("sum", [tf.ones(s) for s in shapes])
            return strategy.run(per_replica)

        all_reduce()
        start = time.perf_counter()
        for _ in range(args.steps):
            tf.nest.map_structure(lambda t: t, strategy.experimental_local_results(all_reduce())[0][0].numpy())
        result["allreduce_ms"] = (time.perf_counter() - start) / args.steps * 1e3
    return {**result, **(child_read(args, work) if args.read else {})}


def child_read(args, work: Path) -> dict:
    """One epoch of `feature_training.train_on_features` (what finetune runs) over the feature file, a small dense
    part on its rows (the bytes read, not the step, are measured here): the bytes this worker read from the file,
    counted at `storage.feed._preadv` (the training feed's only read), and the file's feature bytes."""
    import keras
    import numpy as np

    from vggbn.cluster import distribute
    from vggbn.numerics.feature_training import TrainingPlan, train_on_features
    from vggbn.storage import features, feed

    read = [0]
    preadv = feed._preadv

    def counted(fd, iovecs, count, offset):
        done = preadv(fd, iovecs, count, offset)
        read[0] += max(done, 0)
        return done

    feed._preadv = counted
    distribute.strategy()  # before TensorFlow runs anything
    with features.open_features(work / "train.h5") as file:
        shape, rows = file["features"].shape[1:], file["features"].shape[0]
        feature_bytes = rows * int(np.prod(shape)) * file["features"].dtype.itemsize
    model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1000, activation="softmax")])
    plan = TrainingPlan(epochs=1, batch_size=args.small_batch_size, lr=1e-3, dropout=None, seed=0,
                        shuffle_buffer=4096)
    train_on_features(model, plan, train_path=work / "train.h5", valid_path=work / "valid.h5", show_progress=False)
    return {"read_bytes": read[0], "feature_bytes": feature_bytes}


def most_threads():
    """Start sampling this process' threads every 50 ms; a function returning the most seen so far."""
    import threading

    most = [0]

    def sample():
        while True:
            status = Path("/proc/self/status").read_text()
            most[0] = max(most[0], int(status.split("Threads:")[1].split()[0]))
            time.sleep(0.05)
    threading.Thread(target=sample, daemon=True).start()
    return lambda: most[0]


def measure(kinds: str, workers: int, args, work: Path, batch_size: int | None = None, read: bool = False) -> dict:
    """One launch of `workers` processes running the children `kinds` (comma-separated) in turn: {kind: result},
    each result with the list of every worker's own under "workers"."""
    from vggbn.runner import launch

    batch_size = batch_size or args.batch_size
    out = work / f"{kinds.replace(',', '+')}-{workers}-{batch_size}.json"
    command = [sys.executable, __file__, "--child", kinds, "--work", str(work), "--out", str(out),
               "--images", str(args.images), "--size", str(args.size), "--rows", str(args.rows),
               "--batch-size", str(batch_size), "--small-batch-size", str(args.small_batch_size),
               "--steps", str(args.steps), "--decode-images", str(args.decode_images), *(["--read"] if read else [])]
    env = {**os.environ, "VGGBN_STRATEGY": "auto" if workers > 1 else "none", "TF_CPP_MIN_LOG_LEVEL": "3",
           "VGGBN_LOG": "warning"}
    old = os.environ.copy()
    os.environ.update(env)
    try:
        status = launch.start_local_workers(command, workers, 1)
    finally:
        os.environ.clear()
        os.environ.update(old)
    if status:
        raise SystemExit(f"{kinds} with {workers} workers failed (exit status {status})")
    results = json.loads(out.read_text())
    parts = [json.loads(part.read_text()) for part in sorted(work.glob(f"{out.name}.worker*"))]
    return {kind: {**result, "workers": [part[kind] for part in parts]} for kind, result in results.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=64, help="image side fed to VGG16's conv part")
    parser.add_argument("--rows", type=int, default=16384, help="rows of the feature file training reads")
    parser.add_argument("--batch-size", type=int, default=8192, help="global batch of a training step")
    parser.add_argument("--small-batch-size", type=int, default=1024, help="a smaller global batch, also measured")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--decode-images", type=int, default=1536, help="full-size JPEGs of the decode-bound pass")
    parser.add_argument("--child", help="the measurements a launched process makes: conv, conv_decode, train, "
                        "comma-separated")
    parser.add_argument("--read", action="store_true", help="the train child also measures the bytes read")
    parser.add_argument("--work")
    parser.add_argument("--out")
    parser.add_argument("--smoke", action="store_true",
                        help="8 images at 32 px, 32 full-size JPEGs, global batches of 64 and 32 rows, one launch a "
                        "worker count")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.size, args.rows, args.batch_size, args.small_batch_size, args.steps = 8, 32, 128, 64, 32, 1
        args.decode_images = 32
    if args.child:
        from vggbn.cluster import distribute

        children = {"conv": child_conv, "conv_decode": child_conv_decode, "train": child_train}
        threads_max = most_threads()
        result = {kind: {**children[kind](args, Path(args.work)), "threads_max": threads_max()}
                  for kind in args.child.split(",")}
        if distribute.is_chief():
            Path(args.out).write_text(json.dumps(result))
        Path(f"{args.out}.worker{distribute.cluster().index}").write_text(json.dumps(result))  # each its own
        return
    if CORES < 2:
        raise SystemExit("needs 2 cores: two workers on a core each")
    print_load()
    with tempfile.TemporaryDirectory(prefix="bench-distribute-") as folder:
        work = Path(folder)
        write_jpegs(work / "images", args.images, crop=(224, 224), classes=4, mirror=True)
        side = args.size // 32
        write_features(work / "train.h5", work / "features-work", args.rows, (side, side, 512), classes=1000, seed=0,
                       block=256)
        write_features(work / "valid.h5", work / "features-work-valid", max(args.rows // 16, 1), (side, side, 512),
                       classes=1000, seed=1, block=256)
        write_jpegs(work / "photos", args.decode_images, crop=(500, 375), classes=4, mirror=True)
        if args.smoke:  # keys, not figures: one launch a worker count makes every measurement, the small batch too
            one, two = (measure("conv_decode,conv,train", n, args, work, read=True) for n in (1, 2))
            (decode1, conv1, train1, small1), (decode2, conv2, train2, small2) = (
                (run["conv_decode"], run["conv"], run["train"], run["train"]) for run in (one, two))
        else:
            decode1, decode2 = (measure("conv_decode", n, args, work)["conv_decode"] for n in (1, 2))
            conv1, conv2 = (measure("conv", n, args, work)["conv"] for n in (1, 2))
            train1, train2 = (measure("train", n, args, work, read=True)["train"] for n in (1, 2))
            small1, small2 = (measure("train", n, args, work, args.small_batch_size)["train"] for n in (1, 2))
    figures = {
        "conv_scaling_2w": conv2["conv_img_s"] / conv1["conv_img_s"],
        "train_scaling_2w": train2["train_rows_s"] / train1["train_rows_s"],
        "train_comm_share_2w": train2["allreduce_ms"] / train2["step_ms"],
        f"train_scaling_2w_b{args.small_batch_size}": small2["train_rows_s"] / small1["train_rows_s"],
        f"train_comm_share_2w_b{args.small_batch_size}": small2["allreduce_ms"] / small2["step_ms"],
        "conv_decode_scaling_2w": decode2["conv_decode_img_s"] / decode1["conv_decode_img_s"],
        "conv_decode_share_2w": max(w["decoded"] for w in decode2["workers"]) / decode2["images"],
        "decode_share_of_time_1w": decode1["conv_decode_img_s"] / decode1["decode_img_s"],
        "train_read_share_1w": train1["read_bytes"] / train1["feature_bytes"],
        "train_read_share_2w": max(w["read_bytes"] for w in train2["workers"]) / train2["feature_bytes"],
        "threads_max_2w": max(w["threads_max"] for run in (decode2, conv2, train2, small2) for w in run["workers"]),
        "conv_decode_img_s_1w": decode1["conv_decode_img_s"], "conv_decode_img_s_2w": decode2["conv_decode_img_s"],
        "decode_img_s_1w": decode1["decode_img_s"],
        "conv_img_s_1w": conv1["conv_img_s"], "conv_img_s_2w": conv2["conv_img_s"],
        "train_rows_s_1w": train1["train_rows_s"], "train_rows_s_2w": train2["train_rows_s"],
        "step_ms_1w": train1["step_ms"], "step_ms_2w": train2["step_ms"], "allreduce_ms_2w": train2["allreduce_ms"],
        "images": args.images, "size": args.size, "batch_size": args.batch_size,
        "cpu": subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True,
                              text=True).stdout.strip().replace(" ", "_") or "unknown",
    }
    print(f"conv_scaling_2w = img/s of extract.extract_split (JPEG -> VGG16 conv part at {args.size} px -> HDF5), "
          f"two workers on a core each / one process on one core (target >= 1.6)")
    print(f"conv_decode_scaling_2w = img/s of extract.extract_split on full-size JPEGs (500x375 -> {DECODE_SIZE} px, "
          f"a conv part of {DECODE_FILTERS} filters), two workers on a core each / one process on one core (target "
          ">= 1.7); conv_decode_share_2w = the most images one worker decoded / the pass's images (target <= 0.55); "
          "decode_share_of_time_1w = one process's pass rate / its decode-only rate: the share of its time that "
          "decoding takes (the pass is decode-bound when >= 0.5)")
    print(f"train_scaling_2w = rows/s of Trainer steps of VGG16's dense part with BN (Adam, global batch "
          f"{args.batch_size}), two workers / one process (target >= 1.6)")
    print("train_comm_share_2w = time of the all-reduce of gradient-sized tensors alone / the step's time, two workers")
    print(f"train_read_share_2w = the most bytes one worker read from the feature file in an epoch of "
          f"train_on_features (what finetune runs; global batch {args.small_batch_size}) / the file's feature bytes "
          "(target <= 0.55); train_read_share_1w: one process, which reads every row once (1)")
    print("threads_max_2w = the most threads one of the two workers had alive, sampled every 50 ms (target <= 200: "
          "no thread a collective)")
    print(f"the same at a global batch of {args.small_batch_size}: the all-reduce (TensorFlow's collectives over gRPC on "
          f"127.0.0.1, {train2['allreduce_ms']:.0f} ms for {train2['gradient_mb']:.0f} MB of gradients) costs the same "
          "whatever the batch, so a smaller batch scales less")
    print_figures(figures)


if __name__ == "__main__":
    main()
