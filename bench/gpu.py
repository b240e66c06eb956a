"""Prepared for a GPU machine (none of this project's machines has one; it has not yet run on a GPU): what a GPU
gives the pipeline's training, each figure against a bound measured on the same GPU in the same run.

- `step_over_bound_b<b>`: one `finetune` step of VGG16's dense part (with BN; `training.for_training`,
  `compile_for_training`, `Trainer.train_batch`, the pipeline's own step) on one GPU, against the larger of its
  bytes (28 a weight, `transfer.min_bytes`) over the GPU's in-place bandwidth and its FLOPs (`transfer.min_flops`)
  over the GPU's matmul rate, both measured here (`gpu_gb_s`, `gpu_gflops`).
- `feed_rows_s`: `storage.feed.Feed`'s rows/s of VGG16 `block5_pool` rows (float16, as a feature file stores
  them), each batch copied to the GPU and cast there (what a step receives); `feed_over_step_rows_s`: the feed's
  rate over the step's (>= 1: the feed keeps the GPU busy).
- `two_workers_rows_s` and `two_workers_scaling`: `tests/soak_worker.py`-like training of the dense part as two
  local workers (`launch.start_local_workers`, each its own GPU where there are two; with one GPU the launcher
  refuses two workers, and this says so), against one worker.

`--smoke`: a 7x7x16 dense part and small arrays on whatever device there is (the CPU in CI): keys, not figures.
Run: `python bench/gpu.py` (about 3 minutes on a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_figures, vgg16_dense_part, write_features  # noqa: E402
from transfer import min_bytes, min_flops, step_sizes  # noqa: E402


def best_time(work, calls: int) -> float:
    """The best of `calls` timed calls of `work` (each synchronised by its own `.numpy()`), after one warm-up."""
    work()
    best = math.inf
    for _ in range(calls):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def device_bounds(n: int, elements: int, calls: int) -> dict:
    """The device's matmul rate (n x n fp32) and in-place bandwidth (an axpy on `elements` floats: 12 bytes each)."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    rate = 2 * n ** 3 / best_time(lambda: tf.reduce_sum(tf.matmul(a, a)).numpy(), calls) / 1e9
    x, y = tf.Variable(tf.ones(elements)), tf.ones(elements)
    bandwidth = 12 * elements / best_time(lambda: x.assign_add(y).numpy()[:1], calls) / 1e9
    return {"gpu_gflops": rate, "gpu_gb_s": bandwidth}


def step_time(smoke: bool, batch: int, steps: int) -> tuple[float, dict]:
    import numpy as np

    from vggbn.numerics import surgery
    from vggbn.numerics.training import Trainer, compile_for_training, for_training, seed_everything
    import tensorflow as tf

    seed_everything(0)
    dense = vgg16_dense_part(smoke)
    rng = np.random.default_rng(0)
    stats = {name: (rng.uniform(0, 1, layer.units), rng.uniform(0.5, 2, layer.units))
             for name in surgery.hidden_dense_names(dense) for layer in [dense.get_layer(name)]}
    plain = surgery.insert_bn(dense, stats)
    weights, kernels, first = step_sizes(plain)
    model = for_training(plain, batch)
    compile_for_training(model, 1e-4)
    trainer = Trainer(model, tf.distribute.get_strategy())
    x = rng.normal(size=(batch, *model.input_shape[1:])).astype(np.float32)
    y = rng.integers(0, model.output_shape[-1], batch).astype(np.int32)
    seconds = best_time(lambda: trainer.train_batch(x, y), steps)
    return seconds, {"bytes": min_bytes(weights), "flops": min_flops(kernels, first, batch)}


def feed_rate(path: Path, batch: int, rows: int) -> float:
    import tensorflow as tf

    from vggbn.storage import feed

    stream = feed.Feed(path, batch, 8 * batch, dtype=None, tensors=True)
    device = "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    start, seen = time.perf_counter(), 0
    for x, y in stream.epoch(0):
        with tf.device(device):
            tf.reduce_sum(tf.cast(x, tf.float32)[:1]).numpy()  # on the device, cast there, as a step receives it
        seen += len(y)
    return seen / (time.perf_counter() - start)


def workers_rate(features: Path, workers: int, seconds: float) -> float | None:
    """Rows/s of `tests/soak_worker.py` trained as `workers` local workers for `seconds`; None where refused."""
    from vggbn.runner import gpus, launch

    out = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    worker = Path(__file__).resolve().parents[1] / "tests" / "soak_worker.py"
    env = {"SOAK_SECONDS": str(seconds), "TF_CPP_MIN_LOG_LEVEL": "3", "VGGBN_LOG": "warning",
           "VGGBN_STRATEGY": "auto" if workers > 1 else "none"}
    old = os.environ.copy()
    os.environ.update(env)
    try:
        status = launch.start_local_workers([sys.executable, str(worker), str(features), str(out)], workers)
    except gpus.LaunchError as error:
        print(f"{workers} workers: {error}")
        return None
    finally:
        os.environ.clear()
        os.environ.update(old)
    if status:
        raise SystemExit(f"{workers} workers failed (exit status {status})")
    record = json.loads((out / "soak-0.json").read_text())
    with __import__("h5py").File(features) as file:
        rows = file["features"].shape[0]
    return record["epochs"] * rows / record["seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--smoke", action="store_true", help="a tiny dense part and small arrays (keys, not figures)")
    args = parser.parse_args()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in gpus]
    smi = subprocess.run(["sh", "-c", "nvidia-smi -L 2>&1 | head -4"], capture_output=True, text=True).stdout
    print(f"TensorFlow's GPUs: {names or 'none'}; nvidia-smi: {smi.strip() or 'not found'}")
    batch = 16 if args.smoke else args.batch_size
    bounds = device_bounds(256 if args.smoke else 8192, 1 << (16 if args.smoke else 27), 3 if args.smoke else 10)
    seconds, need = step_time(args.smoke, batch, 3 if args.smoke else 20)
    bound = max(need["bytes"] / bounds["gpu_gb_s"] / 1e9, need["flops"] / bounds["gpu_gflops"] / 1e9)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as folder:
        work = Path(folder)
        rows, shape = (512, (7, 7, 16)) if args.smoke else (32768, (7, 7, 512))
        write_features(work / "train.h5", work / "features-work", rows, shape, classes=10 if args.smoke else 1000,
                       seed=0, block=256)
        feed_rows_s = feed_rate(work / "train.h5", batch, rows)
        small = work / "small.h5"  # the two-worker run trains soak_worker's small model on 32 wide rows
        import h5py
        import numpy as np

        with h5py.File(small, "w") as file:
            rng = np.random.default_rng(0)
            file.create_dataset("features", data=rng.normal(size=(4096, 32)).astype(np.float32), chunks=(64, 32))
            file.create_dataset("labels", data=rng.integers(0, 10, 4096).astype(np.int32))
        one = workers_rate(small, 1, 5 if args.smoke else 30)
        two = workers_rate(small, 2, 5 if args.smoke else 30) if len(gpus) != 1 else None
        if len(gpus) == 1:
            print("two local workers on one GPU: refused by the launcher (one worker a GPU); not measured")
    figures = {f"step_ms_b{batch}": seconds * 1e3, f"bound_ms_b{batch}": bound * 1e3,
               f"step_over_bound_b{batch}": seconds / bound, **bounds, "feed_rows_s": feed_rows_s,
               "step_rows_s": batch / seconds, "feed_over_step_rows_s": feed_rows_s / (batch / seconds),
               "one_worker_rows_s": one, "two_workers_rows_s": two if two is not None else float("nan"),
               "two_workers_scaling": two / one if two is not None else float("nan"),
               "device": "_".join(names[0].split()) + f"_x{len(names)}" if names else "cpu"}
    print(f"step_over_bound_b{batch} = a finetune step's time / max(28 bytes a weight / gpu_gb_s, its FLOPs / "
          "gpu_gflops), both measured on this device in this run (target <= 1.5)")
    print("feed_over_step_rows_s = the feed's rows/s into the device / the step's rows/s (target >= 1)")
    print_figures(figures)


if __name__ == "__main__":
    main()
