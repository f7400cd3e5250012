"""Step rate of a K-learner run against its slowest learner training alone, on the same machine.

Claim measured: running the K base learners as K Ray actors (one core each on a CPU machine) costs little
over the slowest learner alone: efficiency = rate(K-learner Ray run) / rate(slowest learner alone), goal
>= 0.95 (issue "Ray runtime"). The in-process backend, which trains the learners one after another as the
authors' code does, is measured for comparison. Rates are optimiser steps per second of the whole run
(every learner takes one step per step), measured from the `rounds` metrics (training and sync time of
every round) over the steady part of an epoch (the first round and the epoch-end evaluation are excluded).
Every configuration is measured --repeats times, interleaved in rotating order, and each repeat's
efficiency is taken against the slowest learner's "alone" rate of the same repeat; medians and ranges are
printed with the hardware. Beside them, the CPU the Ray run's processes used, by kind (Ray's daemons, Ray
Train's controller, the coordinator, the learners), so the figure separates what the framework costs from
what the 2-core machine costs.

    python benchmarks/parallel_efficiency.py [--recipe generalist-d-small] [--steps 120] [--sync-every 10]
                                             [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_seconds  # noqa: E402 - this folder's module, beside the script

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


# What a process of a Ray run is, by its command line: Ray's own daemons, Ray Train's controller, our
# coordinator, and the learners (Ray Train workers) whose work is the training itself.
CATEGORIES = [("gcs_server", "Ray daemons"), ("raylet", "Ray daemons"), ("agent", "Ray daemons"),
              ("log_monitor", "Ray daemons"), ("monitor.py", "Ray daemons"), ("TrainController", "Ray Train controller"),
              ("Coordinator", "coordinator"), ("RayTrainWorker", "learners"), ("ray::", "other Ray workers")]


class CpuSampler:
    """CPU seconds used by each category of process while a run lasts, read from /proc every 0.2 s (Linux).

    A process's CPU time only grows, so the last sample before it exits counts (up to 0.2 s of it is lost)."""

    TICKS = cpu_seconds.TICK

    def __init__(self):
        self.seen: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, pid: int) -> None:
        # The /proc readers of benchmarks/cpu_seconds.py: "" and None once the process has ended.
        category = next((label for key, label in CATEGORIES if key in cpu_seconds.command_line(pid)), None)
        ticks = cpu_seconds.process_ticks(pid) if category is not None else None
        if ticks is not None:
            self.seen[pid] = (category, ticks / self.TICKS)  # utime + stime

    def _run(self) -> None:
        while not self.stop.is_set():
            for pid in cpu_seconds.pids():
                self._sample(pid)
            self.stop.wait(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def seconds(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for category, cpu in self.seen.values():
            totals[category] = totals.get(category, 0.0) + cpu
        return totals


def run_wall_rate(config, run_dir: Path) -> tuple[float, float, dict[str, float]]:
    """Steps/s from the rounds table, the run's wall time, and CPU seconds per category of Ray process."""
    start = time.perf_counter()
    with CpuSampler() as sampler:
        rate = run_rate(config, run_dir)
    return rate, time.perf_counter() - start, sampler.seconds()


def spread(values: list[float], digits: int = 2) -> str:
    """median (min-max) of repeated measurements."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="generalist-d-small")
    parser.add_argument("--steps", type=int, default=120, help="optimiser steps of the measured epoch")
    parser.add_argument("--sync-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3,
                        help="measurements of every configuration, interleaved in rotating order")
    args = parser.parse_args()
    batch = 128
    base = apply_overrides(get_recipe(args.recipe), [
        "schedule.epochs=1", f"data.train_subset={args.steps * batch}", f"data.batch_size={batch}",
        "eval.n_examples=0", f"mixing.sync_every={args.sync_every}", "runtime.threads_per_learner=1",
        "runtime.cpus_per_learner=1"])
    k = len(base.learners)
    names = [learner.name for learner in base.learners]
    print(f"# parallel_efficiency: {args.recipe}, K={k}, {args.steps} steps of batch {batch}, "
          f"sync_every={args.sync_every}; {platform.machine()} {os.cpu_count()} CPUs, 1 thread per learner, "
          f"torch {torch.__version__}; {args.repeats} repeats, median (min-max)")
    rates: dict[str, list[float]] = {name: [] for name in [*names, "ray", "local"]}
    walls: dict[str, list[float]] = {"ray": [], "local": []}
    cpu_share: dict[str, list[float]] = {}  # category -> share of one core over the Ray run's wall time
    efficiency: dict[str, list[float]] = {"ray": [], "local": []}
    sides = ["alone", "ray", "local"]
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for side in sides[repeat % 3:] + sides[:repeat % 3]:  # a change of machine load hits every side
                if side == "alone":
                    for i, name in enumerate(names):
                        rates[name].append(alone_rate(base, i, min(args.steps, 40)))
                else:
                    rate, wall, cpu = run_wall_rate(apply_overrides(base, [f"runtime.backend={side}"]),
                                                    Path(tmp) / f"{side}-{repeat}")
                    rates[side].append(rate)
                    walls[side].append(wall)
                    if side == "ray":
                        for category, seconds in cpu.items():
                            cpu_share.setdefault(category, []).append(seconds / wall)
            slowest = min(rates[name][-1] for name in names)
            for side in ("ray", "local"):
                efficiency[side].append(rates[side][-1] / slowest)
    slowest_name = min(names, key=lambda n: statistics.median(rates[n]))
    print("| configuration | steps/s | efficiency vs slowest alone (same repeat) | wall incl. start-up (s) |")
    print("|---|---|---|---|")
    for name in names:
        ratio = [r / s for r, s in zip(rates[name], rates[slowest_name])]
        print(f"| learner `{name}` alone | {spread(rates[name])} | {spread(ratio, 3)} | |")
    print(f"| Ray backend, {k} actors | {spread(rates['ray'])} | **{spread(efficiency['ray'], 3)}** | "
          f"{spread(walls['ray'], 0)} |")
    print(f"| in-process backend (sequential) | {spread(rates['local'])} | {spread(efficiency['local'], 3)} | "
          f"{spread(walls['local'], 0)} |")
    print(f"\nCPU used by the processes of the Ray run, in cores over its wall time (start-up included; the machine "
          f"has {os.cpu_count()}):")
    print("| processes | cores |")
    print("|---|---|")
    for category in sorted(cpu_share, key=lambda c: -statistics.median(cpu_share[c])):
        print(f"| {category} | {spread(cpu_share[category], 3)} |")


if __name__ == "__main__":
    main()
