"""The submit path of docs/deploy.md against a real Ray cluster: a `ray start --head` on 127.0.0.1 with 3 logical
GPUs, and the documented `ray job submit` lines (through jobs/submit.py, which is what docker/compose.yaml's
`repro` service runs): prepare the data, train a job with one GPU per learner, evaluate it with a GPU entrypoint,
report it. What differs from a GPU cluster is only what a CPU machine forces: runtime.device=cpu, a small model and
a tiny budget (overrides appended to the job's own), run folders and data in local folders.
(About 3 minutes on 2 cores; marked slow.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from conftest import head_node_ports, stop_processes_of, wait_for_job_agent

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

TINY = ["model.name=small-cnn", "runtime.device=cpu", "data.train_subset=640", "data.val_size=200",
        "data.batch_size=64", "eval.n_examples=50", "eval.pgd_steps=3", "schedule.epochs=2",
        "learners.linf.attack.steps=3", "mixing.redistribute_every=1", "runtime.sync_timeout_s=300"]


def run(argv: list[str], env: dict, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def cluster():
    """A Ray head of our own (own ports, own temp dir, own token), stopped by process group at the end."""
    temp_dir = tempfile.mkdtemp(prefix="rayd-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    env.pop("RAY_ADDRESS", None)
    dashboard, ports = head_node_ports()
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", *ports,
         "--dashboard-host=127.0.0.1", "--num-cpus=4", "--num-gpus=3", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_job_agent(address, env, deadline_s=600, head=head)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of our own group is left
        except ProcessLookupError:
            pass
        stop_processes_of(temp_dir)  # and any of its processes that left our group
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_documented_prepare_data_line_runs_as_a_ray_job(cluster, data_root):
    address, env = cluster
    result = run([str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--runtime-env",
                  "jobs/runtime_env.yaml", "--", "python", "jobs/prepare_data.py", "mnist", "--data-root",
                  str(data_root)], env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "mnist in" in result.stdout and "verified" in result.stdout


def test_a_named_job_trains_with_one_gpu_per_learner_then_evaluates_and_reports(cluster, data_root, tmp_path):
    """`python jobs/submit.py generalist-d --eval --report` (the compose repro command) on a real cluster. The
    job leaves runtime.gpus_per_learner automatic; runtime.device=auto (in place of the job's cuda, which this
    machine has not) lets the run place one of the head's 3 logical GPUs per learner and train on the CPU."""
    address, env = cluster
    runs = tmp_path / "runs"
    result = run([sys.executable, "jobs/submit.py", "generalist-d", "--address", address, "--runs-root", str(runs),
                  "--wait-for-gpus", "60", "--eval", "--report",
                  "--eval-args", "--n 20 --pgd-steps 2 --autoattack none",
                  f'data.root="{data_root}"', *TINY, "runtime.device=auto"], env)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    # The submit lines are the documented ones (jobs/jobs.yaml: the GPU jobs say runtime.device=cuda and leave
    # runtime.gpus_per_learner automatic), and a GPU for the evaluation's entrypoint.
    assert "-- python jobs/run_job.py --recipe generalist-d --runs-root" in out and "runtime.device=cuda" in out
    assert "--entrypoint-num-gpus 1 -- generalist eval" in out
    run_dir = runs / "generalist-d-seed0"
    assert (run_dir / "final" / "global.pt").is_file() and (run_dir / "config.json").is_file()
    assert (run_dir / "eval" / "global" / "eval.json").is_file()
    report = (run_dir / "report" / "report.md").read_text()
    assert "| generalist-d | global | 1 | 20 |" in report
    assert "Attempting to start training worker group of size 2 with the following resources: " \
           "[{'CPU': 1.0, 'GPU': 1.0}] * 2" in out, "each of the 2 learners must hold its own GPU"
