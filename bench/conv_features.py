"""Benchmark of the conv_features stage: the whole image-to-HDF5 path against the conv model alone, bf16 against
fp32, and the conv part's GFLOP/s against a large matmul, all measured side by side in one run.

VGG16 (random weights: nothing is downloaded) cut at block5_pool, 224x224 inputs. Real JPEG files (random crops
of scikit-learn's sample photos, 500x375) go through `vggbn.numerics.extract.extract_split`: read, decode, resize, caffe
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

Every ratio here is a reference, reported either side of 1, none a bound (`roofline.check`): `conv_over_matmul`
compares the conv part's GFLOP/s (the direct count) with a 4096x4096 fp32 matmul's, a reference rate, not a ceiling:
oneDNN's convolutions may block better than that matmul, or use algorithms (Winograd) that do fewer multiplications
than the direct count (1.03x the matmul on a 2-core AMD EPYC with AVX-512 BF16, 2026-12-07).

    python3 bench/conv_features.py [--images 64] [--batch-size 16] [--rounds 4]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

from common import (CORES, Rates, best_rates, matmul_gflops, matmul_warm_up, print_figures, print_load,
                    print_util_min, serial_bound, util_min, write_jpegs)


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="JPEG files to run (a multiple of the batch size)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="alternating measurement rounds")
    parser.add_argument("--matmul-n", type=int, default=4096)
    parser.add_argument("--matmul-calls", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="the demo's two-block VGG at 32x32 on 4 images, seconds")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.batch_size, args.rounds, args.matmul_n, args.matmul_calls = 4, 2, 1, 256, 1
    if args.images % args.batch_size:
        parser.error("--images must be a multiple of --batch-size (a smaller last batch would be retraced)")

    import numpy as np
    import tensorflow as tf

    from vggbn.numerics import extract, models
    from vggbn.storage import features
    from vggbn.numerics.images import ImageInput, load_batch

    print_load()
    with tempfile.TemporaryDirectory(prefix="bench-conv-") as tmp:
        tmp = Path(tmp)
        root = tmp / "images"
        paths = write_jpegs(root, args.images, crop=(500, 375), classes=4, mirror=True)
        md5s = [hashlib.md5((root / p).read_bytes()).hexdigest() for p in paths]
        labels = [i % 4 for i in range(args.images)]
        inputs = ImageInput(root=str(root), batch_size=args.batch_size, resize="squash", preprocess="caffe")
        conv, _ = models.split(models.build_demo_classifier(input_size=32, num_classes=4, filters=(8, 16),
                                                            dense_units=32, seed=1) if args.smoke
                               else models.vgg16("none"))
        size = models.input_size(conv)
        flops = conv_flops_per_image(conv)
        kb = sum((root / p).stat().st_size for p in paths) / args.images / 1e3
        print(f"{args.images} JPEGs 500x375 ({kb:.0f} kB each); VGG16 conv part to {conv.layers[-1].name} at "
              f"{size[0]}x{size[1]}: {flops / 1e9:.2f} GFLOP per image (2 x conv multiply-adds, from the layer shapes)")

        # The in-memory input: the same images, decoded and preprocessed by the library, as tensors.
        x = load_batch(inputs.files(paths), size, inputs.resize, inputs.preprocess)
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
                stats = extract.extract_split(conv, inputs,
                                              features.FeatureRows.of(paths[:count], labels[:count], md5s[:count]),
                                              extract.Extraction("bench"), tmp / f"run{run}" / "train.h5",
                                              tmp / f"work{run}")
                assert stats["computed"] == count, stats
            return work

        print("warm-up: one batch through each path (traces the predict function and the tf.data graph)")
        conv.predict_on_batch(batches[0])
        bf16.predict_on_batch(batches[0])
        pipeline(args.batch_size)()
        dtypes = {"fp32": tf.float32, "bf16": tf.bfloat16}
        for dtype in dtypes.values():
            matmul_warm_up(dtype, args.matmul_n)

        # The input path's own capacity: ImageInput.dataset (read, decode, resize, preprocess) without a model.
        decode = Rates()
        decode.time(lambda: [None for _ in inputs.dataset(paths, size)], args.images)
        print(f"ImageInput.dataset alone (no model): {decode.last()} img/s")

        rates = {key: Rates() for key in ("model_fp32", "pipeline_fp32", "model_bf16", "matmul_fp32", "matmul_bf16")}
        for round_ in range(args.rounds):
            rates["model_fp32"].time(model_alone(conv), args.images)
            rates["pipeline_fp32"].time(pipeline(args.images), args.images)
            rates["model_bf16"].time(model_alone(bf16), args.images)
            for name, dtype in dtypes.items():
                rates[f"matmul_{name}"].record(*matmul_gflops(dtype, args.matmul_n, args.matmul_calls, warm_up=False))
            print(f"round {round_ + 1} (img/s; matmul GFLOP/s): "
                  + ", ".join(f"{key} {rate.last()}" for key, rate in rates.items()), flush=True)

    figures = {}
    for suffix, best in best_rates(rates).items():
        conv_gflops = best["model_fp32"] * flops / 1e9
        figures.update({
            f"pipeline_over_model{suffix}": best["pipeline_fp32"] / best["model_fp32"],
            f"bf16_speedup{suffix}": best["model_bf16"] / best["model_fp32"],
            f"conv_gflops{suffix}": conv_gflops,
            f"matmul_gflops{suffix}": best["matmul_fp32"],
            f"conv_over_matmul{suffix}": conv_gflops / best["matmul_fp32"],
        })
    figures["pipeline_over_model_bound"] = serial_bound(figures["pipeline_over_model_cpu"])
    figures.update({
        "model_fp32_img_s": rates["model_fp32"].best(), "pipeline_fp32_img_s": rates["pipeline_fp32"].best(),
        "model_bf16_img_s": rates["model_bf16"].best(),
        "conv_bf16_gflops": rates["model_bf16"].best() * flops / 1e9, "matmul_bf16_gflops": rates["matmul_bf16"].best(),
        "decode_only_img_s": decode.best(), "decode_only_img_s_cpu": decode.best("cpu"),
        "util_min": util_min(rates), "batch_size": args.batch_size, "images": args.images, "cores": CORES,
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
    print_util_min(figures["util_min"])
    import roofline

    roofline.check(references={
        "pipeline_over_model": (figures["pipeline_over_model"], "the conv part alone on the images in memory"),
        "bf16_speedup": (figures["bf16_speedup"], "the conv part in fp32"),
        "conv_over_matmul": (figures["conv_over_matmul"], f"the {args.matmul_n}x{args.matmul_n} fp32 matmul's "
                                                          f"{figures['matmul_gflops']:.0f} GFLOP/s, no ceiling")})
    print_figures(figures)


if __name__ == "__main__":
    main()
