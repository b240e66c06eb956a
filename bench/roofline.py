"""The machine's roofline, measured once per benchmark run and shared by every benchmark: memory bandwidth and
matmul rate, the two rates a bound may divide by.

A bound is the least a piece of work must cost on this machine: its minimum bytes over the best memory bandwidth
measured, or its FLOPs over the best matmul rate measured, whichever is larger. Both rates are measured so that
they cannot read low (a bound from a low rate is too high, and a ratio against it flatters the work), each call's
the higher of its wall-clock rate and its rate per CPU-second x cores (other processes slow the first, not the
second):

- Bandwidth: the best of several kernels that run at memory speed and move only the bytes counted, on arrays
  allocated and written before timing (no page faults, no zero-fill) and each at least `ARRAY_LLC_MULTIPLE` times
  the last-level cache (the cache cannot hold them), on all cores:
  numpy in-place ufuncs, one thread per core on its own slice (`np.add(a, b, out=a)`: 12 bytes an element, read a
  and b, write a back; `np.multiply(a, s, out=a)`: 8; `a.sum()`: 4, read only), and TensorFlow's in-place kernels on
  its own threads (`ResourceApplyGradientDescent`, an axpy: 12 bytes an element; `ResourceApplyAdam`: 28, read
  the variable, its two slots and the gradient, write the three back; `reduce_sum`: 4). Only bytes a kernel must
  move are counted: a write to a line it has just read needs no extra read (no write-allocate).
- Matmul: GFLOP/s (2 m k n FLOPs) of `tf.linalg.matmul` at the shapes the measured work runs (`shapes`), and at
  4096x4096; the best counts.

Every benchmark's ratios are of two kinds, and `check(bounds=..., references=...)` prints each under its kind:
- a **bound**: the work against the least it can cost here (bytes it must move at the best bandwidth measured, FLOPs
  it must do at a rate nothing it runs exceeds: the matmul rate at the work's own matmul shapes). Work time / bound
  time must be >= 1: below 1 the work ran faster than its bound, so the bound, not the work, is wrong, and the
  benchmark fails naming it.
- a **reference**: the work against another kernel's measured rate (a 4096x4096 matmul for a convolution, which
  oneDNN may block better or compute with fewer multiplications than the direct count), Keras' own step, one
  process: it may fall either side of 1 and is only reported.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import CORES  # (common imports TensorFlow as the stages do: no start-up lines)

ARRAY_LLC_MULTIPLE = 4  # each array at least this many times the last-level cache


class BoundError(SystemExit):
    """A ratio to a bound below 1: the benchmark's bound is wrong. Exits with the message (status 1)."""


def llc_bytes() -> int:
    """The largest cache of CPU 0 (sysfs), 32 MiB where sysfs does not say."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes, default=32 << 20)


def _split(n: int, parts: int) -> list[slice]:
    bounds = [n * i // parts for i in range(parts + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]


def _best_gb_s(work, nbytes: int, calls: int) -> float:
    """Best GB/s of `calls` timed calls of `work()` moving `nbytes` each, after one untimed call: the wall-clock rate
    or, where higher, the rate per CPU-second of this process times the cores. On a shared machine other processes
    take cores from a call and slow its wall clock, not its CPU time: a rate from the wall clock alone read 96
    GFLOP/s for a matmul the measured training then beat by 1.36x (2-core Xeon, load 6, 2026-12-07)."""
    work()
    best_wall = best_cpu = math.inf
    for _ in range(calls):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - wall), min(best_cpu, time.process_time() - cpu)
    return nbytes / min(best_wall, best_cpu / CORES) / 1e9


def numpy_bandwidth(elements: int, calls: int) -> dict[str, float]:
    """GB/s of numpy's in-place add and scale and its read-only sum over float32 arrays of `elements`, one thread
    per core on its own slice (numpy releases the GIL in these loops)."""
    import numpy as np

    a = np.ones(elements, np.float32)  # written: its pages exist before timing
    b = np.full(elements, 1e-30, np.float32)
    scale = np.float32(1.0)
    slices = _split(elements, CORES)
    with ThreadPoolExecutor(CORES) as pool:
        def on_all_cores(kernel):
            return lambda: list(pool.map(kernel, slices))

        rates = {
            "np_add_inplace": _best_gb_s(on_all_cores(lambda s: np.add(a[s], b[s], out=a[s])), 12 * elements, calls),
            "np_scale_inplace": _best_gb_s(on_all_cores(lambda s: np.multiply(a[s], scale, out=a[s])),
                                           8 * elements, calls),
            "np_sum": _best_gb_s(on_all_cores(lambda s: a[s].sum()), 4 * elements, calls),
        }
    return rates


def tf_bandwidth(elements: int, calls: int) -> dict[str, float]:
    """GB/s of TensorFlow's in-place axpy (`ResourceApplyGradientDescent`) and Adam (`ResourceApplyAdam`) and of
    `reduce_sum`, on variables of `elements` float32 (its own thread pool: all cores)."""
    import tensorflow as tf

    var = tf.Variable(tf.ones([elements]))
    m = tf.Variable(tf.zeros([elements]))
    v = tf.Variable(tf.zeros([elements]))
    grad = tf.fill([elements], 1e-6)
    f = tf.constant  # scalars

    def axpy():
        tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=f(1e-9), delta=grad)
        var[0].numpy()  # waits for the kernel

    def adam():
        tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle, beta1_power=f(0.9), beta2_power=f(0.999),
                                     lr=f(1e-9), beta1=f(0.9), beta2=f(0.999), epsilon=f(1e-7), grad=grad)
        var[0].numpy()

    def total():
        tf.reduce_sum(grad).numpy()

    rates = {"tf_axpy_inplace": _best_gb_s(axpy, 12 * elements, calls),
             "tf_adam_inplace": _best_gb_s(adam, 28 * elements, calls),
             "tf_reduce_sum": _best_gb_s(total, 4 * elements, calls)}
    return rates


def matmul_gflops(m: int, k: int, n: int, calls: int, dtype: str = "float32") -> float:
    """Best GFLOP/s (2 m k n a call) of eager `tf.linalg.matmul` of (m, k) by (k, n) operands, after a warm-up."""
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal((m, k), seed=(1, 2)), dtype)
    b = tf.cast(tf.random.stateless_normal((k, n), seed=(3, 4)), dtype)
    return _best_gb_s(lambda: tf.linalg.matmul(a, b)[0, 0].numpy(), 2 * m * k * n, calls)


class Roofline:
    """The bandwidth and matmul figures of one run: `bandwidth` (the best kernel's GB/s), `kernels` (every
    kernel's), `gflops` (the best matmul's GFLOP/s), `matmuls` (each shape's)."""

    def __init__(self, kernels: dict[str, float], matmuls: dict[str, float], array_bytes: int):
        self.kernels, self.matmuls, self.array_bytes = kernels, matmuls, array_bytes
        self.bandwidth = max(kernels.values())
        self.best_kernel = max(kernels, key=kernels.get)
        self.gflops = max(matmuls.values()) if matmuls else math.nan
        self.best_matmul = max(matmuls, key=matmuls.get) if matmuls else ""

    def merged(self, other: "Roofline") -> "Roofline":
        """Each kernel's and matmul's best of the two measurements: measured again in every round of a benchmark,
        so a round slowed by other load does not lower the bound's rates."""
        best = lambda a, b: {k: max(a.get(k, 0.0), b.get(k, 0.0)) for k in {**a, **b}}  # noqa: E731
        return Roofline(best(self.kernels, other.kernels), best(self.matmuls, other.matmuls), self.array_bytes)

    def memory_s(self, nbytes: float) -> float:
        return nbytes / 1e9 / self.bandwidth

    def compute_s(self, flops: float) -> float:
        return flops / 1e9 / self.gflops

    def bound_s(self, nbytes: float, flops: float) -> float:
        """The least time of work moving `nbytes` and computing `flops`: the larger of the two."""
        return max(self.memory_s(nbytes), self.compute_s(flops) if flops else 0.0)

    def describe(self) -> str:
        kernels = ", ".join(f"{k} {v:.1f}" for k, v in self.kernels.items())
        matmuls = ", ".join(f"{k} {v:.0f}" for k, v in self.matmuls.items())
        return (f"roofline: bandwidth {self.bandwidth:.1f} GB/s (best of {kernels}; arrays of "
                f"{self.array_bytes / 2**20:.0f} MiB, {CORES} cores); matmul {self.gflops:.0f} GFLOP/s (best of "
                f"{matmuls or 'none'})")

    def figures(self) -> dict[str, float]:
        return {"roofline_gb_s": self.bandwidth, "roofline_gflops": self.gflops}


def dense_shapes(name: str, units: int, inputs: int, batch: int) -> dict[str, tuple[int, int, int]]:
    """The (m, k, n) matmuls of a training step of a Dense layer of `inputs` -> `units` (its kernel stored transposed,
    as `training.TransposedDense`) at `batch` rows: the forward product and the kernel's gradient (VGG16's fc1, which
    does most of a step's FLOPs, needs no input gradient). A bound on a step's FLOPs divides by the best rate
    measured, these shapes among them: the rates its own matmuls run at."""
    return {f"{name}_b{batch}": (units, inputs, batch), f"{name}_grad_b{batch}": (units, batch, inputs)}


def check(*, bounds: dict[str, tuple[float, str]] = {}, references: dict[str, tuple[float, str]] = {},
          enforce: bool = True) -> None:
    """Print every ratio under its kind, then fail (`BoundError`) naming the bound where a bound's ratio (work time /
    bound time) is below 1. `bounds` and `references`: {key: (ratio, what it is against)}. A reference may fall
    either side of 1 and is only reported. Any ratio that is not finite fails; `enforce` False (a smoke run, where
    everything sits in cache and no bound applies) does not hold bounds to 1."""
    for key, (ratio, against) in references.items():
        print(f"reference {key} = {ratio:.3f} (against {against}; either side of 1, reported only)")
    for key, (ratio, against) in bounds.items():
        print(f"bound {key} = {ratio:.3f} (against {against}; must be >= 1"
              f"{'' if enforce else ', not held in a smoke run'})")
    for kind, ratios in (("reference", references), ("bound", bounds)):
        for key, (ratio, against) in ratios.items():
            if not math.isfinite(ratio):
                raise BoundError(f"error: {key} is {ratio}: no finite ratio to its {kind} ({against})")
    for key, (ratio, against) in bounds.items():
        if enforce and ratio < 1:
            raise BoundError(f"error: {key}={ratio:.3f} < 1: the work ran faster than its bound ({against}); the "
                             "bound is wrong, not the work")


def measure(*, shapes: dict[str, tuple[int, int, int]] = {}, square: int = 4096, calls: int = 3,
            array_bytes: int | None = None, kernels: tuple[str, ...] = ("numpy", "tf")) -> Roofline:
    """The roofline: bandwidth kernels on float32 arrays of `array_bytes` each (default `ARRAY_LLC_MULTIPLE` x the
    last-level cache; a smoke run passes less), matmul at `shapes` ({name: (m, k, n)}) and at `square` x `square`
    (0: none), each the best of `calls` timed calls."""
    array_bytes = array_bytes or ARRAY_LLC_MULTIPLE * llc_bytes()
    elements = array_bytes // 4
    rates = {}
    if "numpy" in kernels:
        rates.update(numpy_bandwidth(elements, calls))
    if "tf" in kernels:
        rates.update(tf_bandwidth(elements, calls))
    shapes = dict(shapes)
    if square:
        shapes[f"{square}x{square}"] = (square, square, square)
    matmuls = {name: matmul_gflops(*shape, calls) for name, shape in shapes.items()}
    return Roofline(rates, matmuls, array_bytes)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="The roofline of this machine, as the benchmarks measure it.")
    parser.add_argument("--smoke", action="store_true", help="8 MiB arrays (in cache: not a memory figure), 256^2")
    args = parser.parse_args()
    roof = measure(square=256 if args.smoke else 4096, array_bytes=(8 << 20) if args.smoke else None,
                   calls=2 if args.smoke else 3)
    print(roof.describe())
    print(" ".join(f"{key}={value:.3f}" for key, value in {**roof.figures(), **{f"{k}_gb_s": v for k, v in
                                                                                  roof.kernels.items()}}.items()))


if __name__ == "__main__":
    main()
