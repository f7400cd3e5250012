"""benchmarks/gpu_check.py keeps its promise of a bounded check: a part that hangs is killed at its budget, with
its children, and recorded as timed out; a failing part is recorded with its exit code. Under 5 s."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from conftest import load_script

REPO = Path(__file__).resolve().parents[2]


def gpu_check():
    return load_script(REPO / "benchmarks" / "gpu_check.py", "gpu_check")


def test_a_hanging_part_and_its_children_are_killed_at_the_budget_and_recorded(tmp_path):
    check = gpu_check()
    marker = tmp_path / "child-survived"
    # The part starts a grandchild that would write the marker after 3 s: killing only the part would let it.
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            f"'import time; time.sleep(3); open(r\"{marker}\", \"w\").write(\"x\")']); print('| a table |', flush=True); "
            "time.sleep(60)")
    part = check.Part("x", "hangs", [sys.executable, "-c", code], budget_s=1.0)
    started = time.perf_counter()
    check.run_part(part, tmp_path / "part-x.log", env=None)
    assert time.perf_counter() - started < 10
    assert part.status == "timed out after 1 s (killed)"
    assert "| a table |" in (tmp_path / "part-x.log").read_text(), "the log keeps what the part printed"
    time.sleep(3.5)
    assert not marker.exists(), "the timed-out part's child process was left running"


def test_a_failing_part_is_recorded_with_its_exit_code_and_the_results_file_lists_every_part(tmp_path):
    check = gpu_check()
    failing = check.Part("a", "fails", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], budget_s=30)
    waiting = check.Part("b", "not reached", ["true"], budget_s=30)
    check.run_part(failing, tmp_path / "part-a.log", env=None)
    assert failing.status == "failed (exit code 3)"
    results = tmp_path / "x.md"
    check.write_results(results, "cmd", "cpu", {"torch": "v"}, [failing, waiting], tmp_path, finished=False)
    text = results.read_text()
    assert "| a. fails | failed (exit code 3) |" in text and "| b. not reached | not run |" in text
    assert "boom" in text and "(in progress or killed)" in text
