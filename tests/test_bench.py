"""Every benchmark under bench/ runs in its smoke mode (tiny sizes, seconds) and ends with its `key=value` line: all
its keys there, every number finite. Benchmarks that nothing runs rot (bench/finetune.py once called a function
that no longer existed)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
KEYS = {
    "transfer": ["step_over_bound_b4", "step_over_bound_b32", "speedup_b4", "speedup_b32", "fused_ms_b4", "adam_ms",
                 "fwd_bwd_ms_b32", "memory_bound_ms_b32", "matmul_bound_ms_b32", "roofline_gb_s", "roofline_gflops",
                 "tf_adam_inplace_gb_s", "np_add_inplace_gb_s"],
    "stream": ["feed_over_read_fp16", "feed_over_read_fp32", "feed_over_read_cpu_fp16", "feed_over_read_cpu_fp32",
               "feed_rows_s_fp16", "feed_1_rows_s_fp32", "feed_gb_s_fp32", "read_rows_s_fp16", "read_1_gb_s_fp32",
               "h5py_rows_s_fp32", "feed_float32_over_read_fp16", "feed_over_read_batch_fp32",
               "feed_over_best_read_fp16"],
    "finetune": ["stream_over_memory", "train_gflops_over_matmul", "bf16_stream_over_memory", "stream_over_memory_cpu",
                 "stream_over_memory_bound", "feed_only_samples_s", "roofline_gflops"],
    "conv_features": ["pipeline_over_model", "bf16_speedup", "conv_over_matmul", "pipeline_over_model_bound",
                      "decode_only_img_s"],
    "verify": ["checked_reuse_over_conv", "checked_reuse_over_plain", "checked_resume_over_plain"],
    "memory": ["rss_ratio_4n", "finetune_rss_ratio_4n", "rss_n_mb", "finetune_rss_4n_mb"],
    "compression": ["zeros_vgg16_block5_pool", "size_lzf_vgg16_block5_pool", "size_gzip_vgg16_block5_pool",
                    "feed_over_read_none_vgg16_block5_pool", "feed_over_read_lzf_vgg16_block5_pool",
                    "feed_over_read_gzip_vgg16_block5_pool"],
    "roofline": ["roofline_gb_s", "roofline_gflops", "np_add_inplace_gb_s", "tf_axpy_inplace_gb_s",
                 "tf_adam_inplace_gb_s", "np_sum_gb_s"],
    "distribute": ["conv_scaling_2w", "train_scaling_2w", "train_comm_share_2w", "train_scaling_2w_b32",
                   "step_ms_2w", "allreduce_ms_2w", "threads_max_2w"],
    "gpu": ["step_over_bound_b16", "gpu_gb_s", "gpu_gflops", "feed_rows_s", "feed_over_step_rows_s",
            "two_workers_scaling"],
}
TEXT_KEYS = {"cpu", "device"}  # figures that name something rather than measure it


def last_line_figures(script: str) -> dict[str, str]:
    result = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--smoke"], capture_output=True, text=True,
                            timeout=600, cwd=BENCH)
    assert result.returncode == 0, (f"bench/{script}.py --smoke failed:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-3000:]}")
    last = result.stdout.strip().splitlines()[-1]
    return dict(pair.split("=", 1) for pair in last.split())


def test_every_script_has_its_smoke_test():
    assert sorted(KEYS) == sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "common")


def check(script: str) -> None:
    figures = last_line_figures(script)
    assert set(KEYS[script]) <= set(figures), f"missing: {set(KEYS[script]) - set(figures)}"
    for key, value in figures.items():
        if key not in TEXT_KEYS:
            assert math.isfinite(float(value)), f"{key}={value}"


def test_bench_transfer():
    check("transfer")


def test_bench_stream():
    check("stream")


def test_bench_finetune():
    check("finetune")


def test_bench_conv_features():
    check("conv_features")


def test_bench_verify():
    check("verify")


def test_bench_memory():
    check("memory")


def test_bench_compression():
    check("compression")


def test_bench_roofline():
    check("roofline")


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="two workers on a core each")
def test_bench_distribute():
    check("distribute")


def test_bench_gpu():
    check("gpu")  # prepared for a GPU machine; here it runs on the CPU
