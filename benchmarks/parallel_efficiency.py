"""Step rate of a K-learner run against its slowest learner training alone, on the same machine.

Claim measured: running the K base learners as K Ray actors (one core each on a CPU machine) costs little
over the slowest learner alone: efficiency = rate(K-learner Ray run) / rate(slowest learner alone), goal
>= 0.95 (issue "Ray runtime"). The in-process backend, which trains the learners one after another as the
authors' code does, is measured for comparison. Rates are optimiser steps per second of the whole run
(every learner takes one step per step), measured from the `rounds` metrics (training and sync time of
every round) over the steady part of an epoch (the first round and the epoch-end evaluation are excluded). One run each; hardware is printed.

    python benchmarks/parallel_efficiency.py [--recipe generalist-d-small] [--steps 120] [--sync-every 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch  # noqa: E402

from generalist.config import apply_overrides  # noqa: E402
from generalist.distributed import train  # noqa: E402
from generalist.learner import Learner  # noqa: E402
from generalist.recipes import get_recipe  # noqa: E402
from generalist.training import prepare_run_data  # noqa: E402


def alone_rate(config, index: int, steps: int) -> float:
    """Steps/s of learner `index` training alone in this process (1 thread), after 5 warm-up steps."""
    torch.set_num_threads(config.runtime.threads)
    data = prepare_run_data(config)
    learner = Learner(config, index, data.initial_state, data.stream, data.model_kwargs, torch.device("cpu"))
    learner.run_steps(1, 0, 5)
    start = time.perf_counter()
    learner.run_steps(1, 5, steps)
    return steps / (time.perf_counter() - start)


def run_rate(config, run_dir: Path) -> float:
    """Steps/s of a whole run from its rounds table, skipping the epoch's first round (warm-up).

    A round's wall time is its training plus its sync. In parallel (Ray) every learner's round ends at the
    same barrier, so it is the slowest learner's `seconds + sync_seconds` (sync_seconds includes the wait
    for the others); one after another (in-process) it is the learners' `seconds` summed, plus the sync."""
    train(config, run_dir, quiet=True)
    rows = [json.loads(line) for line in (run_dir / "metrics" / "rounds.jsonl").read_text().splitlines()]
    by_step: dict[int, list[dict]] = {}
    for row in rows:
        by_step.setdefault(row["global_step"], []).append(row)

    def wall(round_rows: list[dict]) -> float:
        if config.runtime.backend == "local":
            return sum(r["seconds"] for r in round_rows) + round_rows[0]["sync_seconds"]
        return max(r["seconds"] + r["sync_seconds"] for r in round_rows)

    steps = sorted(by_step)[1:]
    return len(steps) * config.mixing.sync_every / sum(wall(by_step[s]) for s in steps)


def run_wall_rate(config, run_dir: Path) -> tuple[float, float]:
    start = time.perf_counter()
    rate = run_rate(config, run_dir)
    return rate, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="generalist-d-small")
    parser.add_argument("--steps", type=int, default=120, help="optimiser steps of the measured epoch")
    parser.add_argument("--sync-every", type=int, default=10)
    args = parser.parse_args()
    batch = 128
    base = apply_overrides(get_recipe(args.recipe), [
        "schedule.epochs=1", f"data.train_subset={args.steps * batch}", f"data.batch_size={batch}",
        "eval.n_examples=0", f"mixing.sync_every={args.sync_every}", "runtime.threads_per_learner=1",
        "runtime.cpus_per_learner=1"])
    k = len(base.learners)
    print(f"# parallel_efficiency: {args.recipe}, K={k}, {args.steps} steps of batch {batch}, "
          f"sync_every={args.sync_every}; {platform.machine()} {os.cpu_count()} CPUs, 1 thread per learner, "
          f"torch {torch.__version__}")
    alone = {base.learners[i].name: alone_rate(base, i, min(args.steps, 40)) for i in range(k)}
    slowest = min(alone.values())
    with tempfile.TemporaryDirectory() as tmp:
        ray_rate, ray_wall = run_wall_rate(apply_overrides(base, ["runtime.backend=ray"]), Path(tmp) / "ray")
        local_rate, local_wall = run_wall_rate(apply_overrides(base, ["runtime.backend=local"]), Path(tmp) / "local")
    print("| configuration | steps/s | efficiency vs slowest alone | wall incl. start-up (s) |")
    print("|---|---|---|---|")
    for name, rate in alone.items():
        print(f"| learner `{name}` alone | {rate:.2f} | {rate / slowest:.3f} | |")
    print(f"| Ray backend, {k} actors | {ray_rate:.2f} | **{ray_rate / slowest:.3f}** | {ray_wall:.0f} |")
    print(f"| in-process backend (sequential) | {local_rate:.2f} | {local_rate / slowest:.3f} | {local_wall:.0f} |")


if __name__ == "__main__":
    main()
