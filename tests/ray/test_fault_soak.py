"""Fault-injection soak: many SIGKILLs of learners and the coordinator at random steps, and every run still ends
byte-identical to its unkilled twin. Marked `slow` (about 15 minutes on 2 cores; `make test-all`).

Each run trains a tiny recipe on the Ray backend while a killer thread SIGKILLs, at seeded random steps, a
learner's process or the coordinator's, waits until the group has recovered (a new join), and kills again. The
final global model is compared with the in-process run of the same config (which the parity tests show equals an
unkilled Ray run). A table of kills, recoveries and wall time lost per kill is printed (run with -s to see it);
benchmarks/results/fault_soak.md records one run of it.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from conftest import assert_same_tensors, coordinator_handle, final_global, read_jsonl
from generalist.distributed import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

# (recipe, kills in the run): 6 runs, 24 kills in all, learners and the coordinator.
RUNS = [("generalist-d-small", 4), ("generalist-t-small", 4), ("generalist-d-small", 4),
        ("generalist-t-small", 4), ("generalist-d-small", 4), ("generalist-t-small", 4)]
OVERRIDES = ("schedule.epochs=3", "runtime.checkpoint_every_rounds=2", "data.train_subset=1280")


def _status(ray, coordinator) -> dict | None:
    try:
        return ray.get(coordinator.status.remote(), timeout=20)
    except Exception:  # noqa: BLE001 - restarting, or the run is over
        return None


def _killer(ray, seed: int, kills: int, total_steps: int, k: int, events: list, since: int) -> threading.Thread:
    rng = random.Random(seed)
    targets = [rng.choice(["coordinator", *range(k)]) for _ in range(kills)]
    steps = sorted(rng.sample(range(3, total_steps - 6), kills))

    def run():
        coordinator = coordinator_handle(ray, since)
        deadline = time.monotonic() + 900
        for target, step in zip(targets, steps):
            while time.monotonic() < deadline:  # wait for the step, in a running (joined) group
                status = _status(ray, coordinator)
                if status is not None and status["joins"] >= 1 and status["global_step"] >= step:
                    break
                time.sleep(0.05)
            else:
                return
            if target == "coordinator":
                pid = status["pid"]
            else:
                pid = ray.get(coordinator.learners.remote(), timeout=20).get(target, {}).get("pid")
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            events.append({"target": target, "step": status["global_step"], "at": time.monotonic(),
                           "incarnation": status["incarnation"], "joins": status["joins"]})
            while time.monotonic() < deadline:  # recovered: a new group joined (after a new coordinator, if it died)
                after = _status(ray, coordinator)
                if after is not None and (after["incarnation"] != status["incarnation"] and after["joins"] >= 1
                                          or after["incarnation"] == status["incarnation"]
                                          and after["joins"] > status["joins"]):
                    events[-1]["recovered_s"] = time.monotonic() - events[-1]["at"]
                    break
                time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_twenty_kills_of_learners_and_the_coordinator_leave_every_run_byte_identical(tiny, tmp_path, local_ray):
    rows, all_events = [], []
    walls_unkilled: dict[str, float] = {}
    for index, (recipe, kills) in enumerate(RUNS):
        config = tiny(recipe, *OVERRIDES)
        local = tmp_path / f"local-{index}"
        train(config, local, quiet=True)
        if recipe not in walls_unkilled:  # the wall time of an unkilled Ray run of this recipe
            started = time.monotonic()
            train(tiny(recipe, *OVERRIDES, "runtime.backend=ray"), tmp_path / f"unkilled-{index}", quiet=True)
            walls_unkilled[recipe] = time.monotonic() - started
        events: list[dict] = []
        total_steps = 3 * (1280 // config.data.batch_size)
        killer = _killer(local_ray, 1000 + index, kills, total_steps, len(config.learners), events, time.time_ns())
        started = time.monotonic()
        train(tiny(recipe, *OVERRIDES, "runtime.backend=ray", f"runtime.max_failures={kills + 2}"),
              tmp_path / f"ray-{index}", quiet=True)
        wall = time.monotonic() - started
        killer.join(timeout=60)
        assert_same_tensors(final_global(local), final_global(tmp_path / f"ray-{index}"))
        logged = [(r["learner"], r["global_step"]) for r in read_jsonl(tmp_path / f"ray-{index}" / "metrics" / "rounds.jsonl")]
        assert len(logged) == len(set(logged)), "rounds re-run after a restart were logged twice"
        recovered = [e for e in events if "recovered_s" in e]
        rows.append((index, recipe, len(events), len(recovered), wall, walls_unkilled[recipe],
                     [e["target"] for e in events]))
        all_events += events
    print("\n| run | recipe | kills | recovered | wall s | unkilled wall s | lost s per kill | killed |")
    print("|---|---|---|---|---|---|---|---|")
    for index, recipe, kills, recovered, wall, unkilled, targets in rows:
        lost = (wall - unkilled) / kills if kills else 0.0
        print(f"| {index} | {recipe} | {kills} | {recovered} | {wall:.0f} | {unkilled:.0f} | {lost:.1f} | "
              f"{', '.join(map(str, targets))} |")
    recovery = sorted(e["recovered_s"] for e in all_events if "recovered_s" in e)
    print(f"kills: {len(all_events)} ({sum(e['target'] == 'coordinator' for e in all_events)} of the coordinator); "
          f"recovery (kill to a new group joined): median {recovery[len(recovery) // 2]:.1f} s, "
          f"max {recovery[-1]:.1f} s")
    assert len(all_events) >= 20, f"only {len(all_events)} kills landed"
    assert any(e["target"] == "coordinator" for e in all_events) and any(e["target"] != "coordinator"
                                                                         for e in all_events)
