"""What runs where on GPUs, as pure functions testable without one: the collectives' implementation for a worker's
device list (never a per-collective timeout), and each local worker's share of the visible GPUs."""

import pytest

from vggbn.cluster import distribute
from vggbn.runner import launch
from vggbn.runner import gpus
from vggbn.runner.gpus import LaunchError


def test_gpu_workers_use_nccl_and_cpu_workers_ring_without_a_per_collective_timeout():
    import tensorflow as tf

    implementation = tf.distribute.experimental.CommunicationImplementation
    gpu, cpu = distribute.communication_options(4), distribute.communication_options(0)
    # a timeout would start a thread per collective (thousands alive within seconds of training)
    assert (gpu.implementation, gpu.timeout_seconds) == (implementation.NCCL, None)
    assert (cpu.implementation, cpu.timeout_seconds) == (implementation.RING, None)


@pytest.mark.parametrize("visible, workers, shares", [
    (["0", "1", "2", "3"], 2, ["0,1", "2,3"]), (["0", "1", "2", "3"], 4, ["0", "1", "2", "3"]),
    (["4", "6", "7"], 2, ["4", "6"]),  # each worker as many as the others: the remainder unused
    ([], 3, [None, None, None])])  # no GPU: the workers compute on the CPU, CUDA_VISIBLE_DEVICES untouched
def test_each_local_worker_gets_its_own_share_of_the_gpus(visible, workers, shares):
    assert [gpus.gpu_share(visible, workers, i) for i in range(workers)] == shares


def test_more_workers_than_gpus_is_refused():
    with pytest.raises(LaunchError, match="3 workers on this machine but 2 GPUs"):
        gpus.gpu_share(["0", "1"], 3, 0)


def test_the_local_launcher_writes_each_workers_share(monkeypatch):
    environments = launch.worker_environments(2, None, ["0", "1", "2", "3"])
    assert [env["CUDA_VISIBLE_DEVICES"] for env in environments] == ["0,1", "2,3"]
    assert all("CUDA_VISIBLE_DEVICES" not in env for env in launch.worker_environments(2, None, []))


def test_visible_gpus_follow_cuda_visible_devices():
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == [] == gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"})


def test_the_device_a_stage_ran_on_is_named():
    from vggbn.cluster import devices

    assert devices.device_label([]) == "cpu"
    assert devices.device_label(["NVIDIA H100 80GB HBM3"] * 2) == "NVIDIA H100 80GB HBM3 x 2"
    assert distribute.describe()["device"] == "cpu"  # this machine has none


def test_gpus_the_system_shows_but_tensorflow_cannot_use_are_one_warning_naming_the_library(tmp_path, monkeypatch):
    """A stand-in `nvidia-smi` (no GPU here) listing a GPU; the CUDA driver library does not load on this machine,
    so the warning names it; nothing where TensorFlow uses the GPUs or they are hidden on purpose."""
    from vggbn.cluster import devices

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    system = devices.system_gpus()
    assert system == ["NVIDIA H100 80GB HBM3"]
    build = {"is_cuda_build": True, "cuda_version": "12.5.1", "cudnn_version": "9"}
    warning = devices.unusable_gpu_warning(system, 0, build, hidden=False)
    assert warning.startswith("nvidia-smi shows NVIDIA H100 80GB HBM3 x 1 but TensorFlow uses no GPU")
    assert "libcuda.so.1" in warning and "failed to load" in warning and "\n" not in warning
    assert "built without CUDA" in devices.unusable_gpu_warning(system, 0, {"is_cuda_build": False}, hidden=False)
    assert devices.unusable_gpu_warning(system, 1, build, hidden=False) is None
    assert devices.unusable_gpu_warning(system, 0, build, hidden=True) is None
    assert devices.unusable_gpu_warning([], 0, build, hidden=False) is None
