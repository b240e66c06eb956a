"""Measure before compressing: how many cached feature values are exactly zero, and what HDF5's built-in `lzf` and
`gzip` filters (no new dependency) do to a feature file's size on disk and to the training feed's rate.

Feature sets:
- the demo's cached features (`--features`, default this checkout's data/features/train.h5 if `dvc repro` made it);
- VGG16 with random weights (`models.vgg16("none")`: nothing is downloaded) at each `--cuts` layer, on `--images`
  JPEG photos (random crops of scikit-learn's two sample photos). Random weights are NOT representative of
  ImageNet weights: a trained VGG16's ReLU outputs are sparser or denser in ways random ones do not predict, so
  these zeros and ratios say what the filters do to such data, not what they would do to real features.

For each set: `zeros_<set>` the fraction of values exactly 0; the set rewritten as a feature file with chunks of
`features.chunk_rows_for` rows, unfiltered, `lzf` and `gzip` (level 4), tiled to at least `--mb` MB so the feed
runs long enough to time: `size_<filter>_<set>` its size / the unfiltered file's, and `feed_over_read_<filter>_<set>`
the rows/s of `feed.Feed` (an epoch, as finetune reads it) on that file / the rows/s of the raw read of the
unfiltered file's chunks into memory (`stream.raw_read_s`, one thread and all cores, page cache warm), all
alternating for `--rounds` rounds, the best of each counting. Filtered chunks must be read and decompressed whole through h5py
(`feed`'s buffered path). No bound is enforced here (`stream.py` holds the feed to its raw read): these ratios
compare filters.

    python3 bench/compression.py [--images 16] [--cuts block3_pool block4_pool block5_pool] [--mb 256] [--smoke]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import CORES, print_figures, print_load, write_jpegs

import stream

FILTERS = {"none": {}, "lzf": {"compression": "lzf"}, "gzip": {"compression": "gzip", "compression_opts": 4}}


def vgg16_features(root: Path, paths: list[str], cut: str, conv_cache: dict):
    """VGG16 (random weights) features at `cut` of the images, float32."""
    import numpy as np

    from vggbn.numerics import models
    from vggbn.numerics.images import ImageInput, load_batch

    if "vgg" not in conv_cache:
        conv_cache["vgg"] = models.vgg16("none")
    conv, _ = models.split(conv_cache["vgg"], cut)
    inputs = ImageInput(root=str(root), batch_size=8, resize="squash", preprocess="caffe")
    x = load_batch(inputs.files(paths), models.input_size(conv), inputs.resize, inputs.preprocess)
    return np.concatenate([np.asarray(conv.predict_on_batch(x[i:i + 8])) for i in range(0, len(x), 8)])


def write(path: Path, values, rows: int, options: dict) -> None:
    """`values` tiled to `rows` rows as a feature file with `options`' filter."""
    import h5py
    import numpy as np

    from vggbn.storage import features

    chunk = features.chunk_rows_for(values.shape[1:], values.dtype)
    with h5py.File(path, "w") as file:
        data = file.create_dataset("features", (rows, *values.shape[1:]), dtype=values.dtype,
                                   chunks=(min(chunk, rows), *values.shape[1:]), **options)
        for start in range(0, rows, len(values)):
            data[start:start + len(values)] = values[:rows - start]
        file.create_dataset("labels", data=np.zeros(rows, np.int32))


def measure_set(name: str, values, args, work: Path, figures: dict) -> None:
    import numpy as np

    from vggbn.storage import feed

    figures[f"zeros_{name}"] = float(np.mean(values == 0))
    rows = max(len(values), int(args.mb * 1e6 // values[0].nbytes))
    paths = {kind: work / f"{name}-{kind}.h5" for kind in FILTERS}
    for kind, options in FILTERS.items():
        write(paths[kind], values, rows, options)
    sizes = {kind: path.stat().st_size for kind, path in paths.items()}
    feeds = {kind: feed.Feed(path, 256, 4096, tensors=True, dtype=None) for kind, path in paths.items()}
    extents = stream.chunk_extents(paths["none"])
    memory = 4 << 20 if args.smoke else stream.ARRAY_LLC_MULTIPLE * stream.llc_bytes()  # as stream.py reads
    work_of = {kind: (lambda seed, f=f: stream.timed(lambda: [None for _ in f.epoch(seed)])[0])
               for kind, f in feeds.items()}
    work_of["read"] = lambda seed: min(stream.raw_read_s(paths["none"], extents, threads, memory)[0]
                                       for threads in (1, CORES))
    for run in work_of.values():
        run(0)  # page cache and buffers warm
    best = {}
    for round_ in range(args.rounds):  # alternating: a round slowed by other load slows every path alike
        for kind, run in work_of.items():
            best[kind] = min(best.get(kind, float("inf")), run(round_ + 1))
    rates = {kind: rows / seconds for kind, seconds in best.items()}
    for path in paths.values():
        path.unlink()
    for kind in FILTERS:
        figures[f"size_{kind}_{name}"] = sizes[kind] / sizes["none"]
        figures[f"feed_over_read_{kind}_{name}"] = rates[kind] / rates["read"]
    print(f"{name}: {values.shape[1:]} {values.dtype}, zeros {figures[f'zeros_{name}']:.3f}; {rows} rows tiled "
          f"({sizes['none'] / 1e6:.0f} MB): size lzf {figures[f'size_lzf_{name}']:.3f}, gzip "
          f"{figures[f'size_gzip_{name}']:.3f}; feed rows/s none {rates['none']:.0f}, lzf {rates['lzf']:.0f}, gzip "
          f"{rates['gzip']:.0f}, raw read {rates['read']:.0f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", nargs="*", default=None, help="feature files (default: the demo's, if made)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--cuts", nargs="+", default=["block3_pool", "block4_pool", "block5_pool"])
    parser.add_argument("--mb", type=float, default=256, help="each file tiled to at least this many MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="2 images, block5_pool, 2 MB files: seconds")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.cuts, args.mb, args.rounds = 2, ["block5_pool"], 2, 1
    import h5py

    print_load()
    figures = {}
    default = Path(__file__).resolve().parent.parent / "data" / "features" / "train.h5"
    files = args.features if args.features is not None else ([default] if default.exists() else [])
    with tempfile.TemporaryDirectory(prefix="bench-compression-") as tmp:
        work = Path(tmp)
        for number, path in enumerate(files):
            with h5py.File(path, "r") as file:
                values = file["features"][:]
            measure_set(f"file{number}" if len(files) > 1 else "demo", values, args, work, figures)
        paths = write_jpegs(work / "images", args.images, crop=(320, 240), classes=2, mirror=True)
        cache: dict = {}
        for cut in args.cuts:
            start = time.perf_counter()
            values = vgg16_features(work / "images", paths, cut, cache)
            print(f"VGG16 (random weights) at {cut}: {len(values)} images in {time.perf_counter() - start:.1f} s")
            measure_set(f"vgg16_{cut}", values, args, work, figures)
    print("random weights are not representative of ImageNet VGG16's features: their zeros and ratios say what the "
          "filters do to such data only")
    figures["cores"] = CORES
    print_figures(figures)


if __name__ == "__main__":
    main()
