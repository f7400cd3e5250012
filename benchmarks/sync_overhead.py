"""Gather + mix + broadcast time of one coordinator round, per model and number of learners.

Claim measured: the time the Ray runtime spends per sync (learners hand their EMA state to the
coordinator actor, it interpolates the global learner and folds it into the global EMA, puts it in the
object store once, and every learner copies it into its own tensors), with no training in between.
It uses the real `Coordinator` actor and the real `GlobalLearner` arithmetic on real model state dicts.
Goal (issue "Ray runtime"): <= 50 ms a round for ResNet-18 on one node, and <= 1% of an epoch at the
default sync_every. Hardware and trial count are printed with the table.

    python benchmarks/sync_overhead.py [--models small-cnn resnet18 wrn-34-10] [--learners 2 3] [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
import torch  # noqa: E402

from generalist.config import apply_overrides  # noqa: E402
from generalist.distributed.coordinator import Coordinator  # noqa: E402
from generalist.distributed.flat_state import FlatLayout  # noqa: E402
from generalist.mixing import flat_clone  # noqa: E402
from generalist.models import build_model  # noqa: E402
from generalist.recipes import get_recipe  # noqa: E402


@ray.remote(num_cpus=0)
class FakeLearner:
    """Holds a model's state like a learner actor does and runs only the sync half of a round."""

    def __init__(self, model_name: str, rank: int):
        torch.manual_seed(rank)
        self.rank = rank
        self.live = build_model(model_name, num_classes=10, in_channels=3, mean=(0.5,) * 3,
                                std=(0.25,) * 3).state_dict()
        self.ema = flat_clone(self.live)  # laid out as a Learner's EMA is
        self.layout = FlatLayout(self.ema)

    def round(self, coordinator, epoch: int) -> float:
        """The sync half of a learner's round, exactly as RaySync does it."""
        start = time.perf_counter()
        wrapped = ray.get(coordinator.exchange.remote(self.rank, epoch, 1, *self.layout.pack(self.ema)))
        if wrapped is not None:
            state = self.layout.unpack(*ray.get(wrapped[0]))
            with torch.no_grad():
                for name, tensor in self.live.items():
                    tensor.copy_(state[name])
        return time.perf_counter() - start


def measure(model_name: str, k: int, rounds: int) -> dict:
    recipe = {2: "generalist-d", 3: "generalist-t"}[k]
    config = apply_overrides(get_recipe(recipe), [f"model.name={model_name}"])
    init = build_model(model_name, num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3).state_dict()
    coordinator = Coordinator.remote(config, init)
    learners = [FakeLearner.remote(model_name, r) for r in range(k)]
    ray.get(coordinator.join.remote(0, 0, [], 0, None)) if k == 1 else None
    ray.get([coordinator.join.remote(r, 0, [], 0, None) for r in range(k)])
    size_mb = sum(t.numel() * t.element_size() for t in init.values()) / 2**20
    timings = {}
    for label, epoch in (("mix only", 1), ("mix + broadcast", config.schedule.epochs)):  # epoch 120 redistributes
        times = []
        for r in range(rounds + 2):
            per_learner = ray.get([learner.round.remote(coordinator, epoch) for learner in learners])
            if r >= 2:  # warm-up rounds excluded
                times.append(max(per_learner))
        timings[label] = times
    for actor in [coordinator, *learners]:
        ray.kill(actor)
    return {"model": model_name, "K": k, "state_mb": size_mb,
            **{f"{label} ms": (1000 * statistics.median(t), 1000 * (max(t) - min(t))) for label, t in timings.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["small-cnn", "resnet18", "wrn-34-10"])
    parser.add_argument("--learners", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    ray.init(num_cpus=max(4, max(args.learners) + 1), include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", logging_level="error")
    torch.set_num_threads(1)
    print(f"# sync_overhead: {platform.machine()} {os.cpu_count()} CPUs, "
          f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; "
          f"ray {ray.__version__}, torch {torch.__version__}; {args.rounds} rounds after 2 warm-up, median (range)")
    print("| model | K | state (MiB) | gather + mix (ms) | gather + mix + broadcast (ms) |")
    print("|---|---|---|---|---|")
    for model_name in args.models:
        for k in args.learners:
            row = measure(model_name, k, args.rounds)
            mix, full = row["mix only ms"], row["mix + broadcast ms"]
            print(f"| {model_name} | {k} | {row['state_mb']:.1f} | {mix[0]:.1f} ({mix[1]:.1f}) "
                  f"| {full[0]:.1f} ({full[1]:.1f}) |", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
