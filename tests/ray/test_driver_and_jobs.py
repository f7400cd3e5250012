"""The driver as a user runs it: killed and resumed, and submitted as a job to a real `ray start --head`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import head_node_ports, stop_processes_of, wait_for_job_agent
from generalist.checkpoint import load_state_dict_file
from generalist.distributed import train

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY_ARGS = ["schedule.epochs=3", "data.train_subset=640", "data.val_size=200", "data.batch_size=64", "eval.n_examples=50",
             "eval.pgd_steps=3", "learners.linf.attack.steps=3", "mixing.redistribute_every=1",
             "schedule.clock_epochs=null", "mixing.global_bn=interpolate",  # as tiny() has them (conftest.TINY)
             "runtime.checkpoint_every_rounds=2"]


def env(data_root: Path) -> dict:
    return {**os.environ, "GENERALIST_DATA": str(data_root), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def test_a_killed_driver_resumes_with_resume_and_ends_bit_identical(tiny, tmp_path, data_root):
    reference = tiny("generalist-d-small", *TINY_ARGS)
    train(reference, tmp_path / "local", quiet=True)
    run_dir = tmp_path / "ray"
    command = [str(BIN / "generalist"), "train", "--recipe", "generalist-d-small", "--run-dir", str(run_dir),
               "--quiet", "runtime.threads_per_learner=1", *TINY_ARGS]
    driver = subprocess.Popen(command, env=env(data_root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.time() + 300
        while len(list(run_dir.glob("ray-session-1/step-*/state.json"))) < 3:
            assert driver.poll() is None, "the driver ended before it could be killed"
            assert time.time() < deadline, "no checkpoints appeared"
            time.sleep(0.2)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver, its local Ray and the learners all die
    finally:
        driver.wait()
    assert not (run_dir / "final").exists()
    resumed = subprocess.run([str(BIN / "generalist"), "train", "--run-dir", str(run_dir), "--resume", "--quiet"],
                             env=env(data_root), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_state_dict_file(tmp_path / "local" / "final" / "global.pt"), load_state_dict_file(
        run_dir / "final" / "global.pt")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.fixture
def ray_head(tmp_path, data_root):
    """A real head node on 127.0.0.1 whose job agent is up, stopped by the test whatever happens: its dashboard
    address and the environment to submit jobs with."""
    head_env = {**env(data_root), "RAY_AUTH_MODE": "token"}
    ray_tmp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    dashboard, ports = head_node_ports()
    try:
        start = subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", *ports,
                                "--dashboard-host=127.0.0.1", "--num-cpus=2", "--disable-usage-stats",
                                f"--temp-dir={ray_tmp}"], env=head_env, capture_output=True, text=True, timeout=600)
        assert start.returncode == 0, start.stderr[-2000:]
        address = f"http://127.0.0.1:{dashboard}"
        wait_for_job_agent(address, head_env, deadline_s=600)
        yield address, head_env
    finally:
        stop_processes_of(ray_tmp)  # also when `ray start` itself failed or timed out half-way
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_job_submitted_to_a_real_head_node_trains_and_writes_its_run(ray_head, tmp_path, data_root):
    address, head_env = ray_head
    runs_root = tmp_path / "runs"
    runtime_env = {"excludes": [".git", "runs", "benchmarks/results", "*.pt", "__pycache__"],
                   "env_vars": {"GENERALIST_DATA": str(data_root), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}}
    command = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
               "--runtime-env-json", json.dumps(runtime_env), "--",
               sys.executable, "jobs/run_job.py", "--recipe", "generalist-d-small", "--runs-root", str(runs_root),
               "--seed", "1", *TINY_ARGS[:-1]]
    submit = subprocess.run(command, env=head_env, capture_output=True, text=True, timeout=900)
    assert submit.returncode == 0, (submit.stdout[-3000:], submit.stderr[-2000:])
    assert "succeeded" in submit.stdout.lower()
    run_dir = runs_root / "generalist-d-small-seed1"
    summary = json.loads((run_dir / "final" / "summary.json").read_text())
    assert summary["seed"] == 1 and summary["backend"] == "ray"
    assert set(summary["final_validation"]) == {"linf", "natural", "global"}
    assert json.loads((run_dir / "config.json").read_text())["schedule"]["epochs"] == 3
