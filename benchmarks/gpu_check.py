"""One command that checks a GPU machine: the GPU tests, epoch times fp32 vs bf16, the sync benchmark and the
Ray-vs-in-process side-by-side, each part under a hard time limit, into one results file named after the device.

Claim: whatever fails or hangs, the check ends within the sum of its parts' budgets (10 minutes with the defaults
on one GPU) and records every part: its command, its status (ok, failed with exit code, timed out, skipped with
the reason), its seconds and its output table. Parts run as subprocesses (a hung CUDA call or Ray cluster cannot
stall the check; a timed-out part's whole process group is killed), in this order:
  a. tests    `pytest -m gpu tests/gpu` (skipped tests are listed, e.g. multi-GPU ones on one GPU)
  b. epoch    `benchmarks/epoch_time.py` for pgd-at, generalist-d, generalist-t at paper scale, fp32 and bf16
  e. determinism  the same for pgd-at in fp32 with `runtime.deterministic=true` (the price of bit-exact runs)
  g. graph    the same with `runtime.cuda_graph=true` (the step as one CUDA graph; generalist-t's learners side by side)
  f. profile  `benchmarks/step_profile.py`: kernels per step, device busy and the longest kernels, pgd-at and natural
  c. sync     `benchmarks/sync_overhead.py` on the device (ResNet-18, 2 and 3 learners)
  d. side     `benchmarks/side_by_side.py`: Ray backend vs in-process, generalist-d and generalist-t
At the end the results file gets the issue's goals table, read from parts b, g and d (benchmarks/gpu_goals.py).
The results file `OUT/<device-slug>.md` is rewritten after every part and each part's full log is written to
`OUT/<device-slug>-logs/` as it runs, so a killed check leaves what it had. Needs no `generalist` install: run from
the repository root with PYTHONPATH=. and the data in $GENERALIST_DATA; no matplotlib, no network.

    PYTHONPATH=. GENERALIST_DATA=.gpudata python benchmarks/gpu_check.py                 # a GPU machine, ~9 min
    PYTHONPATH=. python benchmarks/gpu_check.py --device cpu --smoke --out /tmp/check    # CPU, tiny sizes, ~3 min

Before a GPU session, `pytest -m slow tests/ray/test_gpu_check_smoke.py` runs that smoke whole and checks its
results file; `make test` runs it without parts c and d, which start Ray worker groups (110 s of its 10 minutes).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: `generalist` comes from this checkout

import torch  # noqa: E402

from generalist.repro import git_revision  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_goals  # noqa: E402 - this folder's module, beside the script


@dataclass
class Part:
    key: str
    title: str
    argv: list[str]
    budget_s: float
    needs_ray: bool = False
    status: str = "not run"
    seconds: float = 0.0
    output: str = ""
    table_only: bool = True  # the results file shows the Markdown lines of the output; else its tail
    notes: list[str] = field(default_factory=list)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"cpu-{platform.machine()}-{os.cpu_count()}cpus"


def nvidia_smi() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip()) or "nvidia-smi: no output"
    except (OSError, subprocess.SubprocessError) as error:
        return f"nvidia-smi not available ({type(error).__name__})"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__,
             "CUDA (torch build)": str(torch.version.cuda), "cuDNN": str(torch.backends.cudnn.version())}
    for package in ("ray", "pyautoattack", "numpy", "pyarrow"):
        try:  # metadata, not an import: the check itself never imports Ray
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["driver (nvidia-smi)"] = nvidia_smi()
    found["git"] = git_revision()
    return found


def epoch_recipes_for(smoke: bool) -> list[str]:
    """The recipes of the speed parts: PGD-AT, Generalist-D and Generalist-T, at paper scale or (smoke) small."""
    return [r + ("-small" if smoke else "") for r in ("pgd-at", "generalist-d", "generalist-t")]


def plan(device: str, smoke: bool, python: str, dataset: str | None = None) -> list[Part]:
    """The parts and their budgets (seconds). Full: 150 + 60 + 30 + 75 + 30 + 140 + 130 = 615 s = 10 minutes."""
    bench = Path("benchmarks")  # the parts run in the repository root
    epoch_recipes = epoch_recipes_for(smoke)
    if smoke:  # tiny sizes: every code path runs, in seconds, on a CPU
        epoch_extra = ["--steps", "1", "--warmup", "1", "--threads", "1", "data.batch_size=32", "data.train_subset=640"]
        sync_args = ["--models", "small-cnn", "--learners", "2", "--rounds", "3", "--step-ms", "50"]
        side_args = ["--recipes", "generalist-d-small", "--steps", "4", "--warmup", "1"]
        profile_args = ["--recipes", "pgd-at-small", "--steps", "1", "--warmup", "1", "--threads", "1",
                        "data.train_subset=640"]
        # On a CPU the budgets only stop a hang: parts c and d start Ray worker groups, which on a loaded 2-core
        # machine took 120 s where an idle one takes 50 s (part d, the CI run of stop 24).
        budgets = (120, 120, 300, 300, 120)
        graph_budget = 120
    else:
        epoch_extra = ["--steps", "5", "--warmup", "2"]
        sync_args = ["--models", "resnet18", "--learners", "2", "3", "--rounds", "15"]
        side_args = ["--recipes", "generalist-d", "generalist-t", "--steps", "12", "--warmup", "4"]
        profile_args = ["--recipes", "pgd-at", "natural", "--steps", "3", "--warmup", "2"]
        budgets = (150, 60, 140, 130, 30)  # seconds; measured on one H100: b took 23 s, d about 115 s
        graph_budget = 75  # not yet measured: b's recipes and a capture per learner and precision
    if dataset:  # speed parts on another dataset (synthetic-cifar10: CIFAR-10's shapes where its files are not)
        epoch_extra = [*epoch_extra, f"data.dataset={dataset}"]
        side_args = [*side_args, f"data.dataset={dataset}"]
        profile_args = [*profile_args, f"data.dataset={dataset}"]
    graph_extra = [*epoch_extra]  # five warm-up steps: the graph's three eager ones, its capture, one replay
    graph_extra[graph_extra.index("--warmup") + 1] = "5"
    # On a CPU the graph step falls back to the eager one, which part b measured: the smoke runs the part's
    # command line once, on one recipe. On a GPU generalist-t's round of graph steps side by side, on the learners'
    # own streams, is the goals table's measure of learners that share a GPU.
    graph_recipes = epoch_recipes[:1] if smoke else epoch_recipes
    return [
        Part("a", "GPU tests", [python, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-rs", "-p",
                                "no:cacheprovider"], budgets[0], table_only=False),
        Part("b", "epoch time, fp32 and bf16", [python, str(bench / "epoch_time.py"), "--device", device, "--recipes",
                                                *epoch_recipes, "--precisions", "fp32", "bf16", *epoch_extra],
             budgets[1]),
        # The price of bit-exact GPU runs: part b runs the default (the fast path), this one the same step with
        # deterministic kernels (runtime.deterministic=true, docs/performance.md).
        Part("e", "epoch time with deterministic kernels (the price of bit-exact runs)",
             [python, str(bench / "epoch_time.py"), "--device", device, "--recipes", epoch_recipes[0],
              "--precisions", "fp32", *epoch_extra, "runtime.deterministic=true"], budgets[1] // 2),
        # The step recorded as a CUDA graph (runtime.cuda_graph, generalist/graph_step.py): the same table as part b,
        # with each learner's step path below it; the extra warm-up covers the graph's eager steps and its capture.
        Part("g", "epoch time with the step as a CUDA graph", [python, str(bench / "epoch_time.py"), "--device", device,
                                                              "--recipes", *graph_recipes, "--precisions", "fp32",
                                                              "bf16", *graph_extra, "runtime.cuda_graph=true",
                                                              "runtime.learner_streams=true"],
             graph_budget),
        Part("f", "one step under the profiler", [python, str(bench / "step_profile.py"), "--device", device,
                                                  *profile_args], budgets[4]),
        Part("c", "sync overhead on the device", [python, str(bench / "sync_overhead.py"), "--device", device,
                                                  *sync_args], budgets[2], needs_ray=True),
        Part("d", "Ray backend vs in-process, time per iteration", [python, str(bench / "side_by_side.py"),
                                                                    "--device", device, *side_args],
             budgets[3], needs_ray=True),
    ]


def run_part(part: Part, log: Path, env: dict) -> None:
    """Run one part in its own process group under its budget, streaming its output into `log`."""
    started = time.perf_counter()
    with open(log, "w") as sink:
        sink.write(f"$ {shlex.join(part.argv)}\n")
        sink.flush()
        process = subprocess.Popen(part.argv, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its own group: a timeout kills its children too
        try:
            code = process.wait(timeout=part.budget_s)
            part.status = "ok" if code == 0 else f"failed (exit code {code})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            part.status = f"timed out after {part.budget_s:.0f} s (killed)"
    part.seconds = time.perf_counter() - started
    part.output = log.read_text(errors="replace")


def part_section(part: Part, log: Path) -> list[str]:
    lines = [f"## {part.key}. {part.title}: {part.status}", "",
             f"`python {shlex.join(part.argv[1:])}` - {part.seconds:.0f} s of a {part.budget_s:.0f} s budget; "
             f"full log: `{log.name}`", ""]
    lines += [f"- {note}" for note in part.notes]
    output = part.output.splitlines()[1:]
    if part.table_only and part.status == "ok":
        table = [line for line in output if line.startswith(("|", "#", "placement:"))]
        lines += table or ["(the part printed no table)"]
    elif output:
        lines += ["```", *output[-25:], "```"]
    return lines + [""]


def write_results(path: Path, command: str, device: str, info: dict, parts: list[Part], logs: Path,
                  finished: bool, recipes: list[str] | None = None) -> None:
    head = [f"# GPU check: {device_name(device)}", "",
            f"Command: `{command}`", "",
            f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}" + ("" if finished else " (in progress or killed)"), "",
            "| what | version |", "|---|---|", *[f"| {k} | {v} |" for k, v in info.items()], "",
            "| part | status | seconds | budget s |", "|---|---|---|---|",
            *[f"| {p.key}. {p.title} | {p.status} | {p.seconds:.0f} | {p.budget_s:.0f} |" for p in parts], ""]
    body = [line for p in parts if p.status != "not run" for line in part_section(p, logs / f"part-{p.key}.log")]
    if finished and recipes:
        body += gpu_goals.goals_table({p.key: p.output for p in parts if p.status == "ok"}, *recipes)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(head + body) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds a part), for a CPU or CI")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu"),
                        help="folder of the results file (default: benchmarks/results/gpu)")
    parser.add_argument("--parts", nargs="+", default=["a", "b", "e", "g", "f", "c", "d"],
                        choices=["a", "b", "c", "d", "e", "f", "g"])
    parser.add_argument("--speed-dataset", help="dataset of the speed parts b, d and f, e.g. synthetic-cifar10 on a "
                        "machine without CIFAR-10 (the tests take $GENERALIST_TEST_DATASET)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA GPU; check nvidia-smi, or run --device cpu --smoke",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    name = slug(device_name(args.device)) + ("-smoke" if args.smoke else "")
    logs = out / f"{name}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = out / f"{name}.md"
    command = "PYTHONPATH=. python benchmarks/gpu_check.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PYTHONUNBUFFERED": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    info = versions()
    parts = [p for p in plan(args.device, args.smoke, sys.executable, args.speed_dataset) if p.key in args.parts]
    has_ray = importlib.util.find_spec("ray") is not None
    for part in parts:
        if part.needs_ray and not has_ray:
            part.status = "skipped: Ray is not installed (pip install 'ray[default,train]' or carry its wheels)"
        else:
            print(f"[gpu_check] part {part.key} ({part.title}), at most {part.budget_s:.0f} s ...", flush=True)
            run_part(part, logs / f"part-{part.key}.log", env)
        print(f"[gpu_check] part {part.key}: {part.status} ({part.seconds:.0f} s)", flush=True)
        write_results(results, command, args.device, info, parts, logs, finished=False)
    write_results(results, command, args.device, info, parts, logs, finished=True,
                  recipes=epoch_recipes_for(args.smoke))
    print(f"[gpu_check] wrote {results}")
    return 0 if all(p.status == "ok" or p.status.startswith("skipped") for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
