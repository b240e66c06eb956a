"""What the benchmark scripts share: the test inputs they write (JPEG files, HDF5 feature files), the rate
measurement (wall and CPU, per round), the matmul reference rate and the final `key=value` line.

Importing it first (`import common`, from a script in this folder) puts this checkout's `vggbn` ahead of whatever
`pip install -e` points at and quiets TensorFlow as the stages do (`console.quiet_tensorflow_import`: its start-up
lines filtered out during the import, its native log off after; `VGGBN_LOG=debug` shows them).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

_CHECKOUT = str(Path(__file__).resolve().parent.parent)
if _CHECKOUT not in sys.path:
    sys.path.insert(0, _CHECKOUT)  # this checkout's vggbn, whatever is installed

from vggbn import console  # noqa: E402  (after the path: this checkout's)
from vggbn.cluster.environment import usable_cores  # noqa: E402

console.quiet_tensorflow_import()

CORES = len(usable_cores())


def print_load() -> None:
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {CORES} cores (other processes slow the wall figures)")


class Rates:
    """Measurements of one path, a round each: wall rate (amount per wall-clock second), CPU rate (amount per
    CPU-second of this process, all its threads, times the cores) and util (the share of the cores it got)."""

    def __init__(self):
        self.wall, self.cpu, self.util = [], [], []

    def record(self, wall: float, cpu: float) -> None:
        """One round's wall rate and CPU rate (x cores)."""
        self.wall.append(wall)
        self.cpu.append(cpu)
        self.util.append(wall / cpu)

    def start(self) -> None:
        self._start = time.perf_counter(), time.process_time()

    def stop(self, amount: float) -> None:
        """Record `amount` over the wall and CPU seconds since `start()`."""
        wall, cpu = time.perf_counter() - self._start[0], time.process_time() - self._start[1]
        self.record(amount / wall, amount / cpu * CORES)

    def time(self, work, amount: float):
        """Run `work()`, record `amount` per wall second and per CPU second x cores; return work's result."""
        self.start()
        result = work()
        self.stop(amount)
        return result

    def best(self, kind: str = "wall") -> float:
        return max(getattr(self, kind))

    def best_util(self) -> float:
        """util of the best wall round."""
        return self.util[self.wall.index(max(self.wall))]

    def last(self, digits: int = 2) -> str:
        return f"{self.wall[-1]:.{digits}f} (cpu {self.cpu[-1]:.{digits}f}, util {self.util[-1]:.2f})"


def best_rates(rates: dict) -> dict[str, dict]:
    """{key suffix: {path: best rate}}: '' for the wall rates, '_cpu' for the CPU rates."""
    return {suffix: {key: rate.best(kind) for key, rate in rates.items()}
            for kind, suffix in (("wall", ""), ("cpu", "_cpu"))}


def serial_bound(cpu_ratio: float) -> float:
    """A CPU-rate ratio (slow path / fast path) as the worst case on cores of our own: all the slow path's extra CPU
    work not overlapped at all and run serially, on one core."""
    return 1 / (1 + CORES * (1 / cpu_ratio - 1))


def util_min(rates: dict) -> float:
    """The smallest share of the cores any path got in its best wall round."""
    return min(rate.best_util() for rate in rates.values())


def print_util_min(value: float) -> None:
    print(f"util_min = {value:.2f}: the smallest share of the {CORES} cores this process got in a best "
          "wall round (below ~0.9 other load distorted the wall figures; the cpu figures stand instead)")


@functools.cache
def matmul_operands(dtype, n: int):
    """Two n x n matrices of `dtype` (the same values on every call)."""
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal((n, n), seed=(1, 2)), dtype)
    b = tf.cast(tf.random.stateless_normal((n, n), seed=(3, 4)), dtype)
    return a, b


def matmul_warm_up(dtype, n: int) -> None:
    import tensorflow as tf

    tf.linalg.matmul(*matmul_operands(dtype, n)).numpy()


def matmul_gflops(dtype, n: int, calls: int, *, warm_up: bool = True) -> tuple[float, float]:
    """(wall, CPU x cores) GFLOP/s (2 n^3 per call) of `calls` eager tf.linalg.matmul calls on n x n matrices, after
    one untimed call with `warm_up`."""
    import tensorflow as tf

    a, b = matmul_operands(dtype, n)
    if warm_up:
        matmul_warm_up(dtype, n)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        tf.linalg.matmul(a, b)[0, 0].numpy()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gflop = calls * 2 * n ** 3 / 1e9
    return gflop / wall, gflop / cpu * CORES


def write_jpegs(root: Path, count: int, *, crop: tuple[int, int], classes: int, mirror: bool,
                size: tuple[int, int] | None = None, seed: int = 0) -> list[str]:
    """`count` JPEG files (quality 90) under `root`/train/c<i % classes>/: random `crop`s (width, height) of
    scikit-learn's two bundled 640x427 photos, half of them mirrored with `mirror`, scaled to `size` (width, height)
    if given. Returns their paths relative to `root`."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    width, height = crop
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - height + 1), rng.integers(0, photo.shape[1] - width + 1)
        pixels = photo[top:top + height, left:left + width]
        if mirror and rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        image = Image.fromarray(np.ascontiguousarray(pixels))
        if size is not None:
            image = image.resize(size)
        path = Path("train") / f"c{i % classes}" / f"img{i:06d}.JPEG"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / path, format="JPEG", quality=90)
        paths.append(str(path))
    return paths


def write_features(path: Path, work: Path, rows: int, row_shape, *, classes: int, seed: int, block: int) -> None:
    """A feature file of `rows` random post-ReLU-like float32 rows and labels below `classes`, through
    `features.build_feature_file`, the rows drawn `block` at a time."""
    import numpy as np

    from vggbn.storage import features

    rng = np.random.default_rng(seed)

    def extract(indices):
        for start in range(0, len(indices), block):
            size = len(indices[start:start + block])
            yield np.maximum(rng.standard_normal((size, *row_shape), dtype=np.float32), 0)

    features.build_feature_file(path,
                                features.FeatureRows([f"img{i}" for i in range(rows)],
                                                     rng.integers(0, classes, rows).tolist(), ["-"] * rows),
                                features.FeatureRecipe({"bench": 1}, row_shape, "float32"), extract, work)


def print_figures(figures: dict) -> None:
    """The last line: every figure as key=value, floats to 3 decimals."""
    print(" ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                   for key, value in figures.items()))


def vgg16_dense_part(smoke: bool):
    """VGG16's dense part with random weights (`smoke`: a 7x7x16 -> 64 -> 64 -> 10 chain of the same layer names)."""
    import keras

    from vggbn.numerics import models

    if not smoke:
        return models.split(models.vgg16("none"))[1]
    inputs = keras.Input((7, 7, 16), name="input_layer")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for name in ("fc1", "fc2"):
        x = keras.layers.Dense(64, activation="relu", name=name)(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="predictions")(x))
