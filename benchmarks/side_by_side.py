"""Time per iteration of the Ray backend (learners in parallel) against the in-process backend (learners one after
another on one device, as the authors' code runs them), as a ratio from one run of each.

Claim: for each recipe, seconds per iteration (one optimiser step of every learner + one sync) of
- `in-process`: all K learners in one process on one device (one GPU, or one CPU core: threads_per_learner=1);
- `ray`: one Ray actor per learner, each on its own device when the machine has K (one GPU, or one CPU core each),
  else sharing the GPUs (fractional GPUs, from generalist.distributed.placement): the learners that share a GPU
  share one worker process by default (placement.resolve_grouping; the table says which),
and `speed-up = in-process / ray`. Goals (issue 12): generalist-t >= 2.0, generalist-d >= 1.1 on GPUs, one per
learner; on CPU the ratio is reported, with no goal.

Method: each backend trains the recipe for `--steps` iterations (one epoch of `--steps` x batch images, validation on
a few points), and the time of an iteration is read from the run's metrics/rounds table, so setup (Ray start, data,
worker group) and validation are not counted: in-process, an iteration is the sum of the learners' step seconds +
the sync; Ray, the slowest worker's learners' steps + its sync seconds (its sync includes waiting for the others).
The median over iterations after `--warmup` is reported. One run per backend: the ratio carries that run's noise.

    PYTHONPATH=. python benchmarks/side_by_side.py --device cuda                     # paper scale, both recipes
    PYTHONPATH=. python benchmarks/side_by_side.py --device cpu --recipes generalist-d-small --steps 6 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch  # noqa: E402

from generalist.config import apply_overrides  # noqa: E402
from generalist.distributed import train  # noqa: E402
from generalist.distributed.placement import resolve_gpus, resolve_grouping, with_gpus, worker_groups  # noqa: E402
from generalist.recipes import get_recipe  # noqa: E402

GOALS = {"generalist-t": 2.0, "generalist-d": 1.1}  # on GPUs, one per learner


def rounds(run: Path) -> dict[int, list[dict]]:
    """The rounds table of a run folder, grouped by global step (one row per learner)."""
    import pyarrow.parquet as pq

    grouped = defaultdict(list)
    for row in pq.read_table(run / "metrics" / "rounds.parquet").to_pylist():
        grouped[row["global_step"]].append(row)
    return grouped


def worker_groups_of(run: Path, names: list[str]) -> list[list[str]]:
    """The learners each process of a run held: the Ray backend's placement record, else one process for all."""
    placement = json.loads((run / "metadata.json").read_text()).get("placement")
    if placement is None:
        return [names]
    return [[names[k] for k in group] for group in worker_groups(len(names), placement["learners_per_worker"])]


def iteration_seconds(run: Path, names: list[str], warmup: int) -> float:
    """Per iteration, the slowest process: its learners one after another, then its sync (the same sync_seconds
    on each of its rows); processes run in parallel."""
    groups = worker_groups_of(run, names)
    per_step = []
    for step, rows in sorted(rounds(run).items())[warmup:]:
        by_name = {r["learner"]: r for r in rows}
        per_step.append(max(sum(by_name[n]["seconds"] for n in group) + by_name[group[0]]["sync_seconds"]
                            for group in groups))
    if not per_step:
        raise SystemExit(f"{run}: no iteration after the {warmup} warm-up ones; raise --steps")
    return statistics.median(per_step)


def base_overrides(recipe: str, device: str, steps: int, precision: str) -> list[str]:
    batch = get_recipe(recipe).data.batch_size
    return [f"data.train_subset={steps * batch}", "schedule.epochs=1", "data.val_size=64", "eval.n_examples=32",
            "eval.pgd_steps=1", "mixing.bn_batches=4",  # validation and final model outside the iterations timed
            "mixing.sync_every=1", f"runtime.device={device}", "runtime.threads_per_learner=1",
            "runtime.cpus_per_learner=1", f"runtime.precision={precision}"]


def compare(recipe: str, device: str, steps: int, warmup: int, precision: str, root: Path,
            overrides: list[str]) -> dict:
    config = apply_overrides(get_recipe(recipe), base_overrides(recipe, device, steps, precision) + overrides)
    k = len(config.learners)
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    share, line = resolve_gpus(config, gpus)
    per_worker, grouping = resolve_grouping(with_gpus(config, share))
    placement = ("one CPU core per learner" if share == 0 else
                 "one GPU per learner" if share >= 1 else f"{share:g} of a GPU per learner ({gpus} GPU(s))")
    if per_worker > 1:
        placement += f", {per_worker} learners per worker"
    print(f"{line}\n{grouping}", flush=True)
    timings, walls = {}, {}
    for backend, extra in (("local", []), ("ray", [f"runtime.gpus_per_learner={share:g}"])):
        run = root / f"{recipe}-{backend}"
        started = time.perf_counter()
        train(apply_overrides(config, [f"runtime.backend={backend}", *extra]), run, quiet=True)
        walls[backend] = time.perf_counter() - started
        timings[backend] = iteration_seconds(run, config.learner_names, warmup=warmup)
    ratio = timings["local"] / timings["ray"]
    goal = GOALS.get(recipe) if device == "cuda" and share >= 1 else None
    return {"recipe": recipe, "K": k, "placement": placement, "local": timings["local"], "ray": timings["ray"],
            "ratio": ratio, "goal": goal, "walls": walls}


def describe_device(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} CPUs)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--recipes", nargs="+", default=["generalist-d", "generalist-t"])
    parser.add_argument("--steps", type=int, default=30, help="iterations per run (one epoch)")
    parser.add_argument("--warmup", type=int, default=5, help="first iterations left out of the median")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--keep", help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. data.dataset=...")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible; use --device cpu", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        print(f"# time per iteration, median of {args.steps - args.warmup} after {args.warmup} warm-up; "
              f"{describe_device(args.device)}; torch {torch.__version__}; precision {args.precision}; one run each")
        print("| recipe | K | ray placement | in-process s / iter | ray s / iter | speed-up (in-process / ray) | goal |")
        print("|---|---|---|---|---|---|---|", flush=True)
        results = []
        for recipe in args.recipes:  # each row as soon as it is measured: a killed run keeps what it had
            results.append(compare(recipe, args.device, args.steps, args.warmup, args.precision, root, args.overrides))
            print_row(results[-1])
    print("# wall seconds of each whole run (setup and validation included): " + "; ".join(
        f"{r['recipe']} in-process {r['walls']['local']:.0f}, ray {r['walls']['ray']:.0f}" for r in results))
    return 0


def print_row(r: dict) -> None:
    goal = (f">= {r['goal']:g}: {'met' if r['ratio'] >= r['goal'] else 'not met'}" if r["goal"] is not None
            else "- (goals are for one GPU per learner)")
    print(f"| {r['recipe']} | {r['K']} | {r['placement']} | {r['local']:.4f} | {r['ray']:.4f} | "
          f"{r['ratio']:.2f} | {goal} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
