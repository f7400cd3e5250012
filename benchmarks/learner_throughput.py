"""Training throughput of one base learner next to a bare PyTorch PGD-AT loop doing the same work.

Claim: `generalist.learner.Learner.run_steps` (the step loop every backend runs) trains at >= 0.95 of the
images/s of a plain PyTorch PGD-AT loop, i.e. the framework costs at most 5 % of a learner's time.

Workload (both sides identical): small-cnn on real CIFAR-10 (7,680 training images: 60 full batches of 128),
batch 128, the same augmented batches from one `TrainStream`, Linf PGD-10 (eps 8/255, step 2/255, random
start, `generalist.attacks.pgd`) against the model in eval mode, then one SGD step (lr 0.05, momentum 0.9,
weight decay 3.5e-3) on the mean cross-entropy in train mode, then an EMA update of every tensor of the state.
The bare loop does nothing else: no logging, no host sync. The learner also accumulates loss and accuracy on
the device, checks the state is finite and syncs once per `run_steps` call; it is timed with rounds of 1 step
(sync_every = 1, the reference algorithm) and of 10 steps.

Method: one thread (torch.set_num_threads(1)), the framework's determinism switch on for every side, one
warm-up trial per side, then `--trials` trials of `--steps` optimiser steps per side, run interleaved with the
order rotated each trial (bare, x1, x10; x1, x10, bare; ...) so that a change in machine load hits every side
alike. Reported:
median and min-max of images/s over trials, both by wall clock and by this thread's CPU time (the latter is
less sensitive to other processes on a shared machine), and the median of the per-trial ratios to the bare
loop's trial next to it.

Hardware of the recorded result: see benchmarks/results/learner_throughput.md (2-core CPU, no GPU).
Run:  GENERALIST_DATA=/path/to/data python benchmarks/learner_throughput.py [--trials 15 --steps 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from generalist.attacks import pgd
from generalist.config import apply_overrides
from generalist.learner import Learner
from generalist.losses import cross_entropy
from generalist.mixing import ema_decay
from generalist.models import build_model
from generalist.recipes import get_recipe
from generalist.repro import set_determinism
from generalist.threat import get_threat
from generalist.training import prepare_run_data


def bare_pgd_at(data, spec, steps_per_trial: int):
    """The same training written as a plain loop; returns train(first_step) -> images."""
    model = build_model("small-cnn", **data.model_kwargs)
    model.load_state_dict(data.initial_state)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum,
                                weight_decay=spec.weight_decay)
    live = model.state_dict()
    ema = {k: v.detach().clone() for k, v in live.items()}
    generator = torch.Generator().manual_seed(1)
    threat = get_threat("Linf", spec.attack.eps)
    ema_steps = 0

    def train(first_step: int) -> int:
        nonlocal ema_steps
        images = 0
        for step in range(first_step, first_step + steps_per_trial):
            x, y = data.stream.batch(0, step % data.stream.steps_per_epoch)
            model.eval()
            x_adv = pgd(model, x, y, threat, steps=spec.attack.steps, step_size=spec.attack.step_size,
                        random_start=True, generator=generator)
            model.train()
            loss = cross_entropy(model(x_adv), y).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            d = ema_decay(ema_steps)
            with torch.no_grad():
                for name, shadow in ema.items():
                    if shadow.is_floating_point():
                        shadow.mul_(d).add_(live[name], alpha=1 - d)
                    else:
                        shadow.copy_(live[name])
            ema_steps += 1
            images += len(y)
        return images

    return train


def learner_run(config, data, steps_per_trial: int, round_steps: int):
    learner = Learner(config, 0, data.initial_state, data.stream, data.model_kwargs, torch.device("cpu"))
    spe = data.stream.steps_per_epoch

    def train(first_step: int) -> int:
        images, done = 0, 0
        while done < steps_per_trial:
            # run_steps takes (1-based epoch, first step in it): wrap around epoch 1 as the bare loop does.
            step = (first_step + done) % spe
            n = min(round_steps, spe - step, steps_per_trial - done)
            images += learner.run_steps(1, step, n).images
            done += n
        return images

    return train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="optimiser steps per trial")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    config = apply_overrides(get_recipe("pgd-at-small"), [
        "data.batch_size=128", "data.train_subset=7680", "learners.linf.attack.steps=10",
        "learners.linf.attack.step_size=2/255",
        "runtime.backend=local", f"runtime.threads_per_learner={args.threads}"])
    set_determinism(config.runtime.use_deterministic("cpu"), args.threads)
    data = prepare_run_data(config)
    spec = config.learners[0]
    sides = {
        "bare PyTorch loop": bare_pgd_at(data, spec, args.steps),
        "Learner.run_steps, rounds of 1 step": learner_run(config, data, args.steps, 1),
        f"Learner.run_steps, rounds of {args.steps} steps": learner_run(config, data, args.steps, args.steps),
    }
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for trial in range(args.trials + 1):  # trial 0 is the warm-up
        for name in names[trial % 3:] + names[:trial % 3]:  # rotate, so no side always runs first
            train = sides[name]
            w0, c0 = time.perf_counter(), time.thread_time()
            images = train(trial * args.steps)
            w1, c1 = time.perf_counter(), time.thread_time()
            if trial > 0:
                wall[name].append(images / (w1 - w0))
                cpu[name].append(images / (c1 - c0))

    bare = "bare PyTorch loop"
    print(f"# one learner's training throughput: small-cnn, CIFAR-10, batch 128, Linf PGD-{spec.attack.steps}, "
          f"{args.threads} thread(s)")
    print(f"# torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end, "
          f"{args.trials} trials x {args.steps} steps after 1 warm-up trial, interleaved\n")
    print("| side | img/s wall, median (min-max) | img/s CPU, median (min-max) | ratio to bare, wall | "
          "ratio to bare, CPU |")
    print("|---|---|---|---|---|")
    for name in sides:
        ratio_wall = statistics.median(a / b for a, b in zip(wall[name], wall[bare]))
        ratio_cpu = statistics.median(a / b for a, b in zip(cpu[name], cpu[bare]))
        print(f"| {name} | {statistics.median(wall[name]):.1f} ({min(wall[name]):.1f}-{max(wall[name]):.1f}) | "
              f"{statistics.median(cpu[name]):.1f} ({min(cpu[name]):.1f}-{max(cpu[name]):.1f}) | "
              f"{ratio_wall:.3f} | {ratio_cpu:.3f} |")
    print("\ngoal: ratio >= 0.95")


if __name__ == "__main__":
    main()
