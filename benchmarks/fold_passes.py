"""The global learner's fold on a CPU: the whole-buffer rule as it was against the chunked fold, in one run.

Claim measured: folding K learners' packed EMAs into the global EMA (`GlobalLearner.fold`, what every sync does)
moves each byte a few times, not ~14: the chunked fold reads each learner's EMA once and reads and writes the
global state once (K + 2 passes over memory), with the same bits as the rule it replaces. Memory passes are
estimated from time: one pass is the time to read or write the float buffer once, measured as half of a
`copy_` of it (one read + one write) in the same run. Goal (issue "The multi-GPU path right the first time"):
a fold of K = 3 ResNet-18 states in <= K + 2 passes, bits unchanged. Median of `--trials` after 2 warm-ups,
one thread.

- `whole buffer (before)`: `weighted_sum` of the K float views (a new tensor per term and per partial sum), then
  `shadow.mul_(d); shadow.add_(mixed * (1 - d))`, as GlobalLearner.fold did before (kept here as the baseline).
- `chunked (now)`: GlobalLearner.fold.

    python benchmarks/fold_passes.py [--models resnet18] [--learners 2 3] [--trials 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from generalist.mixing import GlobalLearner, ema_decay_product, heaviest, weighted_sum  # noqa: E402
from generalist.models import build_model  # noqa: E402
from generalist.packed_state import StateLayout  # noqa: E402
from generalist.recipes import get_recipe  # noqa: E402

KWARGS = {"num_classes": 10, "in_channels": 3, "mean": (0.5,) * 3, "std": (0.25,) * 3}


@torch.no_grad()
def fold_whole_buffer(glob: GlobalLearner, emas: list[torch.Tensor], weights: list[float], n_steps: int) -> None:
    """GlobalLearner.fold before the chunked version: every partial result is a new state-sized tensor."""
    mixed = weighted_sum([glob.layout.floats(b) for b in emas], weights)
    decay = ema_decay_product(glob.ema_steps, n_steps, glob.max_decay)
    shadow = glob.layout.floats(glob.buffer)
    shadow.mul_(decay)
    shadow.add_(mixed * (1 - decay))
    glob.layout.integer_bytes(glob.buffer).copy_(glob.layout.integer_bytes(emas[heaviest(weights)]))
    glob.ema_steps += n_steps


def median_ms(call, trials: int) -> float:
    for _ in range(2):
        call()
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18"])
    parser.add_argument("--learners", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--trials", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# fold_passes: {platform.machine()} {os.cpu_count()} CPUs, one thread; torch {torch.__version__}; "
          f"median of {args.trials} after 2 warm-ups; one run")
    print("| model | K | floats (MiB) | one pass ms | fold | ms | passes | bits equal to the whole-buffer rule |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    config = get_recipe("generalist-t")  # paper scale: the data-epoch clock, decay 0.999
    for name in args.models:
        torch.manual_seed(0)
        init = build_model(name, **KWARGS).state_dict()
        layout = StateLayout(init)
        for k in args.learners:
            generator = torch.Generator().manual_seed(k)
            emas = [layout.pack({n: (v + torch.randn(v.shape, generator=generator) if v.is_floating_point() else v)
                                 for n, v in init.items()}) for _ in range(k)]
            weights = [1 / k] * k
            floats = layout.floats(emas[0])
            target = torch.empty_like(floats)
            one_pass = median_ms(lambda: target.copy_(floats), args.trials) / 2
            before, now = GlobalLearner(config, init), GlobalLearner(config, init)
            fold_whole_buffer(before, emas, weights, 1)
            now.fold(emas, weights, 1)
            same = torch.equal(before.buffer, now.buffer)
            size = floats.numel() * floats.element_size() / 2**20
            for label, fold in (("whole buffer (before)", lambda: fold_whole_buffer(before, emas, weights, 1)),
                                ("chunked (now)", lambda: now.fold(emas, weights, 1))):
                ms = median_ms(fold, args.trials)
                print(f"| {name} | {k} | {size:.1f} | {one_pass:.2f} | {label} | {ms:.1f} | {ms / one_pass:.1f} | "
                      f"{'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
