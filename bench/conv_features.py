"""Benchmark of the conv_features stage: the whole image-to-HDF5 path against the conv model alone, bf16 against
fp32, and the conv part's GFLOP/s against a large matmul, all measured side by side in one run.

VGG16 (random weights: nothing is downloaded) cut at block5_pool, 224x224 inputs. Real JPEG files (random crops
of scikit-learn's sample photos, 500x375) go through `vggbn.extract.extract_split`: read, decode, resize, caffe
preprocessing in tf.data, the conv part, and the chunked HDF5 file written by `features.build_feature_file`.
The same images, already decoded and preprocessed in memory, go through `predict_on_batch` alone at the same
batch size. Each path is warmed up first (tracing), then the measurements alternate for `--rounds` rounds.

Every measurement gives two rates. Wall: items per wall-clock second, the best round counting (other processes on a
shared machine only ever slow a round down). CPU: items per CPU-second of this process times the cores, what the
cores would deliver if this process had them to itself and kept them busy; it is far less sensitive to other load
(it reads up to ~15% high under contention, when waiting threads spin less) and blind to idle waits. `util` is the
share of the cores the process got during the best wall round: near 1, the wall figures need no CPU cross-check.
From the CPU figures, `pipeline_over_model_bound` is the worst case on cores of our own: the pipeline's extra CPU
work (decode, resize, HDF5 writes) not overlapped at all, run on one core.

    python3 bench/conv_features.py [--images 64] [--batch-size 16] [--rounds 4]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's vggbn, whatever is installed

CORES = len(os.sched_getaffinity(0))


class Rates:
    """Measurements of one path: wall rate, CPU rate and core share per round."""

    def __init__(self):
        self.wall, self.cpu, self.util = [], [], []

    def time(self, work, amount: float):
        """Run `work()`, record `amount` per wall second and per CPU second x cores; return work's result."""
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.wall.append(amount / wall)
        self.cpu.append(amount / cpu * CORES)
        self.util.append(cpu / wall / CORES)
        return result

    def best(self, kind: str = "wall") -> float:
        return max(getattr(self, kind))

    def best_util(self) -> float:
        return self.util[self.wall.index(max(self.wall))]

    def last(self) -> str:
        return f"{self.wall[-1]:.2f} (cpu {self.cpu[-1]:.2f}, util {self.util[-1]:.2f})"


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` 500x375 JPEGs (quality 90): random crops of scikit-learn's bundled photos, some mirrored."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427x640 RGB photos
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - 375 + 1), rng.integers(0, photo.shape[1] - 500 + 1)
        crop = photo[top:top + 375, left:left + 500]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        path = folder / "train" / f"c{i % 4}" / f"img{i:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(path, format="JPEG", quality=90)
        paths.append(str(path.relative_to(folder)))
    return paths


def conv_flops_per_image(model) -> int:
    """2 x multiply-adds of every Conv2D layer (out_h * out_w * k_h * k_w * c_in * c_out); bias, ReLU and pooling
    are left out (under 0.1%)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            k_h, k_w, c_in, c_out = layer.kernel.shape
            total += 2 * height * width * k_h * k_w * c_in * c_out
    return total


def matmul_operands(dtype, n: int):
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal((n, n), seed=(1, 2)), dtype)
    b = tf.cast(tf.random.stateless_normal((n, n), seed=(3, 4)), dtype)
    tf.linalg.matmul(a, b).numpy()  # warm-up
    return a, b


def matmuls(a, b, calls: int) -> None:
    import tensorflow as tf

    for _ in range(calls):
        tf.linalg.matmul(a, b)[0, 0].numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="JPEG files to run (a multiple of the batch size)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="alternating measurement rounds")
    parser.add_argument("--matmul-n", type=int, default=4096)
    parser.add_argument("--matmul-calls", type=int, default=3)
    args = parser.parse_args()
    if args.images % args.batch_size:
        parser.error("--images must be a multiple of --batch-size (a smaller last batch would be retraced)")

    import numpy as np
    import tensorflow as tf

    from vggbn import extract, images, models

    print(f"load average at start: {os.getloadavg()[0]:.2f} on {CORES} cores (other processes slow the wall figures)")
    with tempfile.TemporaryDirectory(prefix="bench-conv-") as tmp:
        tmp = Path(tmp)
        root = tmp / "images"
        paths = write_jpegs(root, args.images)
        md5s = [hashlib.md5((root / p).read_bytes()).hexdigest() for p in paths]
        labels = [i % 4 for i in range(args.images)]
        conv, _ = models.split(models.vgg16("none"))
        size = models.input_size(conv)
        flops = conv_flops_per_image(conv)
        kb = sum((root / p).stat().st_size for p in paths) / args.images / 1e3
        print(f"{args.images} JPEGs 500x375 ({kb:.0f} kB each); VGG16 conv part to {conv.layers[-1].name} at "
              f"{size[0]}x{size[1]}: {flops / 1e9:.2f} GFLOP per image (2 x conv multiply-adds, from the layer shapes)")

        # The in-memory input: the same images, decoded and preprocessed by the library, as tensors.
        x = images.load_batch([str(root / p) for p in paths], size, "squash", "caffe")
        batches = [tf.constant(x[i:i + args.batch_size]) for i in range(0, len(x), args.batch_size)]
        bf16 = models.with_compute_dtype(conv, "bfloat16")

        def model_alone(model):
            def work():
                for batch in batches:
                    np.asarray(model.predict_on_batch(batch))
            return work

        runs = iter(range(1_000_000))

        def pipeline(count: int):
            def work():
                run = next(runs)  # a fresh output and work folder: nothing may be reused or resumed
                stats = extract.extract_split(conv=conv, model_md5="bench", root=root, paths=paths[:count],
                                              labels=labels[:count], md5s=md5s[:count],
                                              out_path=tmp / f"run{run}" / "train.h5", work_dir=tmp / f"work{run}",
                                              batch_size=args.batch_size, resize="squash", preprocess="caffe")
                assert stats["computed"] == count, stats
            return work

        print("warm-up: one batch through each path (traces the predict function and the tf.data graph)")
        conv.predict_on_batch(batches[0])
        bf16.predict_on_batch(batches[0])
        pipeline(args.batch_size)()
        operands = {"fp32": matmul_operands(tf.float32, args.matmul_n),
                    "bf16": matmul_operands(tf.bfloat16, args.matmul_n)}
        matmul_flop = args.matmul_calls * 2 * args.matmul_n ** 3

        # The input path's own capacity: images.image_dataset (read, decode, resize, preprocess) without a model.
        decode = Rates()
        decode.time(lambda: [None for _ in images.image_dataset([str(root / p) for p in paths], size=size,
                                                                 resize="squash", preprocess="caffe",
                                                                 batch_size=args.batch_size)], args.images)
        print(f"images.image_dataset alone (no model): {decode.last()} img/s")

        rates = {key: Rates() for key in ("model_fp32", "pipeline_fp32", "model_bf16", "matmul_fp32", "matmul_bf16")}
        for round_ in range(args.rounds):
            rates["model_fp32"].time(model_alone(conv), args.images)
            rates["pipeline_fp32"].time(pipeline(args.images), args.images)
            rates["model_bf16"].time(model_alone(bf16), args.images)
            for dtype in ("fp32", "bf16"):
                rates[f"matmul_{dtype}"].time(partial(matmuls, *operands[dtype], args.matmul_calls), matmul_flop / 1e9)
            print(f"round {round_ + 1} (img/s; matmul GFLOP/s): "
                  + ", ".join(f"{key} {rate.last()}" for key, rate in rates.items()), flush=True)

    figures = {}
    for kind, suffix in (("wall", ""), ("cpu", "_cpu")):
        best = {key: rate.best(kind) for key, rate in rates.items()}
        conv_gflops = best["model_fp32"] * flops / 1e9
        figures.update({
            f"pipeline_over_model{suffix}": best["pipeline_fp32"] / best["model_fp32"],
            f"bf16_speedup{suffix}": best["model_bf16"] / best["model_fp32"],
            f"conv_gflops{suffix}": conv_gflops,
            f"matmul_gflops{suffix}": best["matmul_fp32"],
            f"conv_over_matmul{suffix}": conv_gflops / best["matmul_fp32"],
        })
    # Contention-proof lower bound for a machine of our own: the pipeline's extra CPU work run serially, on one core.
    figures["pipeline_over_model_bound"] = 1 / (1 + CORES * (1 / figures["pipeline_over_model_cpu"] - 1))
    figures.update({
        "model_fp32_img_s": rates["model_fp32"].best(), "pipeline_fp32_img_s": rates["pipeline_fp32"].best(),
        "model_bf16_img_s": rates["model_bf16"].best(),
        "conv_bf16_gflops": rates["model_bf16"].best() * flops / 1e9, "matmul_bf16_gflops": rates["matmul_bf16"].best(),
        "decode_only_img_s": decode.best(), "decode_only_img_s_cpu": decode.best("cpu"),
        "util_min": min(rate.best_util() for rate in rates.values()), "batch_size": args.batch_size,
        "images": args.images, "cores": CORES,
    })
    print(f"pipeline_over_model = img/s of extract.extract_split (JPEG files -> HDF5, fresh work folder) / img/s of "
          f"conv.predict_on_batch on the same images in memory, fp32, batch {args.batch_size}, best of "
          f"{args.rounds} alternating rounds each: wall {figures['pipeline_over_model']:.3f}, "
          f"cpu {figures['pipeline_over_model_cpu']:.3f}; bound {figures['pipeline_over_model_bound']:.3f}: the "
          f"worst case on {CORES} cores of our own, if all the pipeline's extra CPU work (decode, HDF5) ran serially "
          f"on one core, 1 / (1 + {CORES} x (1 / cpu - 1)) (target >= 0.9)")
    print(f"bf16_speedup = img/s of models.with_compute_dtype(conv, 'bfloat16') / fp32, model alone: "
          f"wall {figures['bf16_speedup']:.3f}, cpu {figures['bf16_speedup_cpu']:.3f} (target >= 1.7)")
    print(f"conv_over_matmul = fp32 conv GFLOP/s ({flops / 1e9:.2f} GFLOP/img x img/s) / GFLOP/s of a "
          f"{args.matmul_n}x{args.matmul_n} fp32 tf.linalg.matmul: wall {figures['conv_over_matmul']:.3f}, "
          f"cpu {figures['conv_over_matmul_cpu']:.3f} (target >= 0.8)")
    print(f"util_min = {figures['util_min']:.2f}: the smallest share of the {CORES} cores this process got in a best "
          "wall round (below ~0.9 other load distorted the wall figures; the cpu figures stand instead)")
    print(" ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                   for key, value in figures.items()))


if __name__ == "__main__":
    main()
