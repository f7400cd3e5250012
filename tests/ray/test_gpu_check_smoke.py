"""benchmarks/gpu_check.py runs end to end on a CPU in smoke mode, as it must on the first GPU machine: every part
runs as a subprocess and lands in one results file with its table. Its budgets only stop a hang, so a slow machine
does not fail it.

`make test` runs the parts that need no Ray (about 40 s on 2 cores); the whole check, with parts c and d, which
start local Ray worker groups (110 s more), is the slow test: run it before a session on a GPU machine with
`pytest -m slow tests/ray/test_gpu_check_smoke.py` (`make test` keeps to its 10 minutes: issue 23, item 8; the Ray
backend those parts time is tested by the rest of tests/ray)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def part_status(results: str, key: str) -> str:
    match = re.search(rf"^\| {key}\. [^|]+ \| ([^|]+) \|", results, re.M)
    assert match, f"part {key} is missing from the results table"
    return match.group(1).strip()


def run_smoke(out: Path, data_root: Path, *parts: str) -> tuple[subprocess.CompletedProcess, str, Path]:
    env = {**os.environ, "GENERALIST_DATA": str(data_root), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--smoke", "--out", str(out),
                           *(["--parts", *parts] if parts else [])],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    (results_file,) = out.glob("cpu-*-smoke.md")
    return done, results_file.read_text(), results_file


def assert_parts_without_ray(done: subprocess.CompletedProcess, results: str) -> None:
    """Parts a, b, e, g and f: the GPU tests, the epoch times, the step profile and the goals read from them."""
    assert "Command: `PYTHONPATH=. python benchmarks/gpu_check.py --device cpu --smoke" in results
    assert re.search(r"^\| torch \| \S+", results, re.M) and "| ray |" in results
    for key in ("a", "b", "e", "g", "f"):
        assert part_status(results, key) == "ok", f"part {key}:\n{done.stdout}\n{results}"
    assert done.returncode == 0
    epoch = results.split("## b.")[1]
    for recipe in ("pgd-at-small", "generalist-d-small", "generalist-t-small"):
        for precision in ("fp32", "bf16"):
            assert re.search(rf"^\| {recipe} \| {precision} \| small-cnn \|", epoch, re.M), (recipe, precision)
    profile = results.split("## f.")[1]
    assert re.search(r"^\| pgd-at-small \| small-cnn \| 128 \| fp32 \| linf \| [\d.]+ \| \d+ \| - \| - \| [\d.]+ \| \d+ % \|",
                     profile, re.M), profile
    goals = results.split("## Goals of the GPU step")[1]  # read from parts b, g and d (benchmarks/gpu_goals.py)
    assert re.search(r"^\| Linf PGD training step, pgd-at-small, fp32 \(ms\), eager / graph \| [\d.]+ / [\d.]+ \|",
                     goals, re.M), goals


def test_gpu_check_smoke_on_cpu_runs_the_parts_without_ray_into_one_results_file(tmp_path, data_root):
    done, results, results_file = run_smoke(tmp_path, data_root, "a", "b", "e", "g", "f")
    assert_parts_without_ray(done, results)
    assert "## c." not in results and "## d." not in results, "parts not asked for ran"
    assert (tmp_path / f"{results_file.stem}-logs" / "part-f.log").is_file(), "each part's full log is kept"


@pytest.mark.slow
def test_gpu_check_smoke_on_cpu_writes_every_part_into_one_results_file(tmp_path, data_root):
    done, results, results_file = run_smoke(tmp_path, data_root)
    assert_parts_without_ray(done, results)
    for key in ("c", "d"):
        assert part_status(results, key) == "ok", f"part {key}:\n{done.stdout}\n{results}"
    sync = results.split("## c.")[1].split("## d.")[0]
    for path in ("object store", "collective (shared memory)"):  # the old path against the new, in one run
        assert re.search(rf"^\| {re.escape(path)} \| small-cnn \| 2 \| ", sync, re.M), sync
    side = results.split("## d.")[1]
    assert re.search(r"^\| generalist-d-small \| 2 \| one CPU core per learner \| [\d.]+ \| [\d.]+ \| [\d.]+ \|",
                     side, re.M), side
    assert (tmp_path / f"{results_file.stem}-logs" / "part-d.log").is_file(), "each part's full log is kept"
    goals = results.split("## Goals of the GPU step")[1]
    assert re.search(r"^\| Ray backend on the device, against in-process \(speed-up\) \| generalist-d-small [\d.]+,",
                     goals, re.M), goals
