"""Every benchmark under bench/ runs in its smoke mode (tiny sizes, seconds) and ends with its `key=value` line: all
its keys there, every number finite, each ratio printed under its kind (bound or reference), and no framework
start-up line anywhere. Benchmarks that nothing runs rot (bench/finetune.py once called a function that no longer
existed)."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vggbn import console

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
# Ratios each script prints under their kind (roofline.check): a bound must be >= 1 (not held in a smoke run), a
# reference is only reported. Scripts not listed print no ratio of either kind.
KINDS = {
    "transfer": {"bound": ["step_over_bound_b4", "step_over_bound_b32"], "reference": ["speedup_b4", "speedup_b32"]},
    "stream": {"bound": ["read_over_feed_fp16", "read_over_feed_fp32"],
               "reference": ["feed_over_read_fp16", "feed_over_read_fp32"]},
    "finetune": {"bound": ["matmul_over_train_gflops"],
                 "reference": ["stream_over_memory", "bf16_stream_over_memory"]},
    "conv_features": {"bound": [], "reference": ["pipeline_over_model", "bf16_speedup", "conv_over_matmul"]},
    "verify": {"bound": [], "reference": ["checked_reuse_over_plain", "checked_resume_over_plain",
                                          "checked_reuse_over_conv"]},
}


def last_line_figures(script: str) -> tuple[dict[str, str], str]:
    """The smoke run's last line as {key: value}, and its whole stdout."""
    result = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--smoke"], capture_output=True, text=True,
                            timeout=600, cwd=BENCH)
    assert result.returncode == 0, (f"bench/{script}.py --smoke failed:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-3000:]}")
    for stream in (result.stdout, result.stderr):  # TensorFlow's start-up lines are chatter, here as in the stages
        chatter = set(stream.splitlines()) - set(console.start_up_lines_kept(stream))
        assert not chatter, f"bench/{script}.py printed framework start-up lines: {sorted(chatter)[:3]}"
    last = result.stdout.strip().splitlines()[-1]
    return dict(pair.split("=", 1) for pair in last.split()), result.stdout


def test_every_script_has_its_smoke_test():
    assert sorted(KEYS) == sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "common")


def check(script: str) -> None:
    figures, stdout = last_line_figures(script)
    assert set(KEYS[script]) <= set(figures), f"missing: {set(KEYS[script]) - set(figures)}"
    for key, value in figures.items():
        if key not in TEXT_KEYS:
            assert math.isfinite(float(value)), f"{key}={value}"
    printed = {kind: re.findall(rf"^{kind} (\w+) = ", stdout, re.MULTILINE) for kind in ("bound", "reference")}
    assert printed == KINDS.get(script, {"bound": [], "reference": []}), printed


def test_a_reference_above_one_is_reported_and_a_bound_below_one_fails(capsys):
    """What the benchmarks' ratios go through: a reference on either side of 1 is printed, a bound below 1 stops the
    run with its error line (a smoke run does not hold it to 1), a ratio that is not finite fails either kind."""
    sys.path.insert(0, str(BENCH))
    try:
        import roofline
    finally:
        sys.path.remove(str(BENCH))
    roofline.check(references={"conv_over_matmul": (1.03, "the 4096x4096 fp32 matmul")},
                   bounds={"step_over_bound": (1.2, "28 W bytes at the best bandwidth")})
    out = capsys.readouterr().out
    assert "reference conv_over_matmul = 1.030 (against the 4096x4096 fp32 matmul;" in out
    assert "bound step_over_bound = 1.200 (against 28 W bytes at the best bandwidth; must be >= 1)" in out
    with pytest.raises(roofline.BoundError) as failed:
        roofline.check(references={"conv_over_matmul": (1.03, "the matmul")},
                       bounds={"matmul_over_conv": (0.974, "the 4096x4096 fp32 matmul's 504 GFLOP/s")})
    assert failed.value.code == ("error: matmul_over_conv=0.974 < 1: the work ran faster than its bound (the "
                                 "4096x4096 fp32 matmul's 504 GFLOP/s); the bound is wrong, not the work")
    roofline.check(bounds={"matmul_over_conv": (0.974, "the matmul")}, enforce=False)
    for kind in ("bounds", "references"):
        with pytest.raises(roofline.BoundError, match="no finite ratio"):
            roofline.check(**{kind: {"x_over_y": (math.nan, "y")}}, enforce=False)


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
