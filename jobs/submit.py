"""Submit a named job of jobs/jobs.yaml to a Ray cluster with its one `ray job submit` line, then evaluate it.

    python jobs/submit.py --list                        the named jobs, their learners and GPUs
    python jobs/submit.py generalist-d --print          the job's submit line (what jobs/README.md lists); runs nothing
    python jobs/submit.py generalist-d --address http://127.0.0.1:8265 --eval --report
                                                        train, then `generalist eval` the run folder as a second job,
                                                        then `generalist report` it into RUN/report/report.md

The address is the cluster's dashboard (default: $RAY_ADDRESS). The run folder is RUNS_ROOT/RECIPE-seedSEED on the
cluster's shared volume (jobs/run_job.py names it); the evaluation writes RUN/eval/global/eval.json there and prints
the result table into the job's log. This script only assembles and runs `ray` commands: it never imports Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

JOBS_FILE = Path(__file__).resolve().parent / "jobs.yaml"
RUNTIME_ENV = "jobs/runtime_env.yaml"
ADDRESS_PLACEHOLDER = '"$RAY_ADDRESS"'  # what --print writes when no address is given


def load_jobs(path: Path = JOBS_FILE) -> dict:
    """jobs.yaml as {"runs_root": str, "seeds": [...], "jobs": {name: {...}}}, names unique."""
    data = yaml.safe_load(path.read_text())
    jobs: dict[str, dict] = {}
    for job in data["jobs"]:
        if job["name"] in jobs:
            raise ValueError(f"{path}: job {job['name']!r} is listed twice")
        jobs[job["name"]] = job
    return {"runs_root": data["runs_root"], "seeds": data.get("seeds", [0]), "jobs": jobs}


def run_dir(job: dict, runs_root: str, seed: int = 0) -> str:
    """Where jobs/run_job.py puts the job's run folder: RUNS_ROOT/RECIPE-seedSEED."""
    return f"{runs_root.rstrip('/')}/{job['recipe']}-seed{seed}"


def train_command(job: dict, runs_root: str, seed: int = 0, extra: list[str] | None = None) -> list[str]:
    """The entrypoint of the training job: jobs/run_job.py with the job's recipe and overrides."""
    command = ["python", "jobs/run_job.py", "--recipe", job["recipe"], "--runs-root", runs_root]
    if seed:
        command += ["--seed", str(seed)]
    return command + list(job.get("overrides", [])) + list(extra or [])


def eval_command(job: dict, runs_root: str, seed: int = 0, extra: list[str] | None = None) -> list[str]:
    """The entrypoint of the evaluation job: `generalist eval` of the run's global learner."""
    return ["generalist", "eval", run_dir(job, runs_root, seed)] + list(extra or [])


def report_command(job: dict, runs_root: str, seed: int = 0) -> list[str]:
    """The entrypoint of the report job: the run's Markdown table and plots in RUN/report/."""
    folder = run_dir(job, runs_root, seed)
    return ["generalist", "report", folder, "--out", f"{folder}/report"]


def submit_argv(address: str, entrypoint: list[str], entrypoint_gpus: float = 0) -> list[str]:
    """`ray job submit` of an entrypoint with the project as working directory and jobs/runtime_env.yaml."""
    argv = ["ray", "job", "submit", "--address", address, "--working-dir", ".", "--runtime-env", RUNTIME_ENV]
    if entrypoint_gpus:
        argv += ["--entrypoint-num-gpus", f"{entrypoint_gpus:g}"]
    return argv + ["--"] + entrypoint


def as_line(argv: list[str]) -> str:
    """A shell line; the "$RAY_ADDRESS" placeholder stays a variable for the reader's shell to expand."""
    return " ".join(a if a == ADDRESS_PLACEHOLDER else shlex.quote(a) for a in argv)


def ray_executable() -> str:
    """The `ray` command beside this Python (a venv need not be activated), else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.is_file() else "ray"


def cluster_gpus(address: str) -> float:
    """GPUs of the live nodes of the cluster at `address`, from Ray's state API (`ray list nodes`)."""
    argv = [ray_executable(), "list", "nodes", "--address", address, "--format", "json", "--limit", "10000"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    nodes = json.loads(out)
    return sum(float(n.get("resources_total", {}).get("GPU", 0)) for n in nodes if n.get("state") == "ALIVE")


def wait_for_gpus(address: str, need: float, timeout_s: float, poll_s: float = 5.0) -> None:
    """Block until the cluster offers `need` GPUs: a job checks capacity once, when it starts."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            have = cluster_gpus(address)
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            have = 0.0  # the dashboard is still starting
        if have >= need:
            return
        if time.monotonic() >= deadline:
            raise SystemExit(f"error: the cluster at {address} offers {have:g} GPUs after {timeout_s:g} s; "
                             f"the job needs {need:g} (one per learner)")
        time.sleep(poll_s)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", nargs="?", help="a job name of jobs/jobs.yaml (see --list)")
    parser.add_argument("--list", action="store_true", help="list the named jobs")
    parser.add_argument("--print", action="store_true", help="print the submit line(s) and run nothing")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="the cluster's dashboard, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-root", help="shared folder of run folders (default: runs_root of jobs.yaml)")
    parser.add_argument("--eval", action="store_true", help="after training, evaluate the run folder as a job")
    parser.add_argument("--report", action="store_true", help="then write RUN/report/report.md as a job")
    parser.add_argument("--eval-args", default="", help="extra `generalist eval` arguments, one shell string")
    parser.add_argument("--wait-for-gpus", type=float, default=0, metavar="SECONDS",
                        help="first wait up to this long for the cluster to offer the job's GPUs")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="extra config overrides for the job")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    book = load_jobs()
    if args.list:
        for name, job in book["jobs"].items():
            print(f"{name:22s} {job['gpus']:2d} GPU  {job['reproduces']}")
        return 0
    if args.job not in book["jobs"]:
        print(f"error: unknown job {args.job!r}; jobs: {', '.join(book['jobs'])}", file=sys.stderr)
        return 2
    job, runs_root = book["jobs"][args.job], args.runs_root or book["runs_root"]
    address = args.address or (ADDRESS_PLACEHOLDER if args.print else None)
    if not address:
        print("error: no cluster address: pass --address http://HEAD:8265 or export RAY_ADDRESS", file=sys.stderr)
        return 2
    steps = [submit_argv(address, train_command(job, runs_root, args.seed, args.overrides))]
    if args.eval:
        steps.append(submit_argv(address, eval_command(job, runs_root, args.seed, shlex.split(args.eval_args)),
                                 entrypoint_gpus=1 if job["gpus"] else 0))
    if args.report:
        steps.append(submit_argv(address, report_command(job, runs_root, args.seed)))
    if args.print:
        for step in steps:
            print(as_line(step))
        return 0
    if args.wait_for_gpus and job["gpus"]:
        wait_for_gpus(address, job["gpus"], args.wait_for_gpus)
    for step in steps:
        print(f"$ {as_line(step)}", flush=True)
        code = subprocess.run([ray_executable(), *step[1:]], check=False, cwd=JOBS_FILE.parent.parent).returncode
        if code:
            return code
    folder = run_dir(job, runs_root, args.seed)
    print(f"run folder: {folder}" + (f"; table: {folder}/report/report.md" if args.report else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
