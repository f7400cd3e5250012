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
