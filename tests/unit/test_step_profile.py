"""benchmarks/step_profile.py: the device's busy time is the union of its kernels' intervals, so kernels of two
streams that overlap are not counted twice and gaps are not counted at all (the whole script runs in the GPU
check's CPU smoke, tests/ray/test_gpu_check_smoke.py)."""

from __future__ import annotations

from pathlib import Path

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_profile.py"


def load_step_profile():
    return load_script(SCRIPT, "step_profile")


def test_busy_time_is_the_union_of_kernel_intervals():
    union_length = load_step_profile().union_length
    assert union_length([]) == 0
    assert union_length([(0, 10), (20, 25)]) == 15  # a gap of 10 is the device waiting
    assert union_length([(20, 25), (0, 10), (5, 12)]) == 17  # overlapping (two streams), given in any order
    assert union_length([(0, 30), (5, 10), (12, 20)]) == 30  # kernels inside another count once


def test_batch_norm_is_told_from_the_rest_by_operation_and_kernel_names():
    is_batch_norm = load_step_profile().is_batch_norm
    # CPU operations (the profiler's aten names), forward and backward.
    assert is_batch_norm("aten::native_batch_norm") and is_batch_norm("aten::native_batch_norm_backward")
    # GPU kernels: cuDNN's inference, training and backward kernels, and PyTorch's own.
    assert is_batch_norm("void cudnn::bn_fw_inf_1C11_kernel_NCHW<float, float, int, 512, true, 1, true>(...)")
    assert is_batch_norm("void cudnn::bn_bw_1C11_kernel_new<float, float, float2, 512, true, 1>(...)")
    assert is_batch_norm("void at::native::batch_norm_collect_statistics_channels_last_kernel<...>(...)")
    assert is_batch_norm("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<"
                         "at::native::batch_norm_elementwise(...)::{lambda()#1}>(...)")
    # Not BatchNorm: convolutions, their cuDNN kernels, and names that merely contain "bn".
    for name in ("aten::cudnn_convolution", "aten::convolution_backward", "sm90_xmma_fprop_implicit_gemm_bf16",
                 "void cudnn::cnn::conv2d_grouped_direct_kernel<...>", "aten::add_", "ampere_bnorm_like_gemm"):
        assert not is_batch_norm(name), name
