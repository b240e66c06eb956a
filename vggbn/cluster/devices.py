"""What a stage ran on, said aloud: the device its metrics record (`cpu`, or the GPU model and count), and one
warning where the system shows GPUs (`nvidia-smi` answers) that TensorFlow cannot use, naming the library that
failed to load, instead of a run that silently goes on on the CPU (TensorFlow's own messages about it are muted
with the rest of its start-up chatter). Nothing here changes a result, so it is no stage's DVC dependency.
"""

from __future__ import annotations

import ctypes
import glob
import os
import subprocess
import sys
from typing import Sequence

# what TensorFlow's CUDA build loads, in the order it needs them (`major` from tf.sysconfig.get_build_info())
CUDA_LIBRARIES = ("libcuda.so.1", "libcudart.so.{cuda}", "libcublas.so.{cuda}", "libcublasLt.so.{cuda}",
                  "libcufft.so.11", "libcusparse.so.{cuda}", "libcusolver.so.11", "libcudnn.so.{cudnn}")


def system_gpus() -> list[str]:
    """The GPUs `nvidia-smi` lists (their model names), or none where it is missing or fails."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def device_label(gpu_names: Sequence[str]) -> str:
    """What a stage's metrics record as `device`: `cpu`, or e.g. `NVIDIA H100 80GB HBM3 x 2`."""
    if not gpu_names:
        return "cpu"
    return " + ".join(f"{name} x {list(gpu_names).count(name)}" for name in dict.fromkeys(gpu_names))


def _loads(name: str) -> str | None:
    """None if the library `name` loads (from the loader's path, or from the pip `nvidia-*` packages TensorFlow's
    wheel uses), else the loader's error."""
    try:
        ctypes.CDLL(name)
        return None
    except OSError as error:
        first = str(error)
    for folder in sys.path:
        for candidate in glob.glob(os.path.join(folder, "nvidia", "*", "lib", name)):
            try:
                ctypes.CDLL(candidate)
                return None
            except OSError:
                pass
    return first


def missing_library(cuda_version: str, cudnn_version: str) -> str | None:
    """The first library of TensorFlow's CUDA build that does not load, with the loader's error; None if all do."""
    cuda, cudnn = (cuda_version or "12").split(".")[0], (cudnn_version or "9").split(".")[0]
    for pattern in CUDA_LIBRARIES:
        name = pattern.format(cuda=cuda, cudnn=cudnn)
        error = _loads(name)
        if error is not None:
            return f"{name} ({error})"
    return None


def unusable_gpu_warning(system: Sequence[str], usable: int, build: dict, hidden: bool) -> str | None:
    """The warning where the system shows GPUs (`system`, nvidia-smi's names) but TensorFlow uses none (`usable`);
    None where it uses them, or where `CUDA_VISIBLE_DEVICES` hides them on purpose (`hidden`)."""
    if not system or usable or hidden:
        return None
    seen = f"nvidia-smi shows {device_label(system)} but TensorFlow uses no GPU: this stage runs on the CPU"
    if not build.get("is_cuda_build"):
        return f"{seen} (this TensorFlow is built without CUDA: pip install 'tensorflow[and-cuda]')"
    library = missing_library(build.get("cuda_version", ""), build.get("cudnn_version", ""))
    if library:
        return f"{seen} (CUDA {build.get('cuda_version')} / cuDNN {build.get('cudnn_version')}: {library} failed to load)"
    return f"{seen} (every CUDA library loads: check the driver with nvidia-smi, and TF_CPP_MIN_LOG_LEVEL=0 for TensorFlow's reason)"


def gpus_hidden() -> bool:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return value is not None and not [n for n in value.split(",") if n.strip() not in ("", "-1")]

