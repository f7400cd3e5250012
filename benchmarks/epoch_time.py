"""Time per training epoch of a recipe at its own scale (paper scale by default), from timed steps.

Claim: for each recipe, the seconds one optimiser step of each base learner takes on this device, the
seconds of one global-learner sync (the interpolation of the K EMAs, done every `sync_every` steps in the
mixing phase), and what they make per epoch:
- `one device`: the learners take turns on one device (the in-process backend), so an epoch costs the sum
  of their steps (+ one sync per step in the mixing phase at sync_every = 1);
- `device per learner`: each learner on its own device (the Ray backend's shape), so an epoch costs the
  slowest learner's steps (+ the sync; the Ray transfer of the states is not in this number:
  benchmarks/sync_overhead.py measures it).
Epoch figures are `steps_per_epoch x median step time`, an estimate from `--steps` timed steps after
`--warmup` untimed ones on real CIFAR-10 batches, not a timed epoch; validation is not included.

Method: the recipe's config (model, batch, attacks, optimiser) and the framework's own Learner.run_steps, one
step per call (each call ends with a host sync, so CUDA time is counted), the GlobalLearner's sync on the
learners' EMA states. One process; the learners run one after another. For a recipe of several learners it also
times a round of one step of all of them as the training loop runs it (generalist.learner.run_round: side by side,
each on its own CUDA stream under runtime.learner_streams) and prints it against their steps one after another.

    GENERALIST_DATA=/path/to/data python benchmarks/epoch_time.py --recipes pgd-at generalist-d --device cuda
    python benchmarks/epoch_time.py --recipes pgd-at-small generalist-d-small --steps 20   # CPU scale
    python benchmarks/epoch_time.py --device cuda --precisions fp32 bf16 --steps 5 --warmup 2   # what gpu_check runs
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time

import torch

from generalist.config import apply_overrides
from generalist.learner import Learner, run_round
from generalist.mixing import GlobalLearner
from generalist.recipes import get_recipe
from generalist.repro import resolve_device, set_determinism
from generalist.training import prepare_run_data


def median_seconds(call, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_recipe(recipe: str, device_name: str, steps: int, warmup: int, threads: int, overrides: list[str],
                precision: str = "fp32") -> dict:
    config = apply_overrides(get_recipe(recipe), ["runtime.backend=local", f"runtime.device={device_name}",
                                                  f"runtime.threads_per_learner={threads}",
                                                  f"runtime.precision={precision}", *overrides])
    device = resolve_device(config.runtime.device)
    set_determinism(config.runtime.use_deterministic(device.type), config.runtime.threads)
    data = prepare_run_data(config)
    spe = data.stream.steps_per_epoch
    learners = [Learner(config, k, data.initial_state, data.stream, data.model_kwargs, device)
                for k in range(len(config.learners))]
    step_seconds = {}
    for learner in learners:
        position = itertools.count()  # successive steps of epoch 1, wrapping around

        def step(learner=learner, position=position):
            learner.run_steps(1, next(position) % spe, 1)

        for _ in range(warmup):
            step()
        step_seconds[learner.name] = median_seconds(step, steps)
    round_seconds = sync_seconds = None
    if len(learners) > 1:
        position = itertools.count()

        def round_of_all():
            run_round(learners, 1, next(position) % spe, 1)

        for _ in range(warmup):
            round_of_all()
        round_seconds = median_seconds(round_of_all, steps)
        global_learner = GlobalLearner(config, data.initial_state, device,
                                      steps_per_epoch=data.stream.steps_per_epoch)
        last_epoch = config.schedule.clock_length  # the last clock epoch mixes: every learner carries weight

        def sync():
            global_learner.sync([learner.ema_buffer for learner in learners], last_epoch, 1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        for _ in range(warmup):
            sync()
        sync_seconds = median_seconds(sync, steps)
    return {"recipe": recipe, "precision": precision, "model": config.model.name, "batch": config.data.batch_size,
            "steps_per_epoch": spe, "step_paths": {learner.name: step_path(learner) for learner in learners},
            "step_seconds": step_seconds, "round_seconds": round_seconds, "sync_seconds": sync_seconds,
            "device": str(device), "learner_streams": any(learner.cuda_stream is not None for learner in learners)}


def step_path(learner: Learner) -> str:
    """How the learner's steps ran: eagerly, or replayed from a CUDA graph (runtime.cuda_graph)."""
    from generalist.graph_step import GraphedStep

    step = learner.train_step
    if not isinstance(step, GraphedStep):
        return "eager"
    return "eager (the capture failed)" if step.failed else f"CUDA graph ({step.captures} capture(s))"


def describe_device(device_name: str) -> str:
    if device_name.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device_name))
    return f"CPU ({platform.machine()}, {os.cpu_count()} CPUs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["pgd-at", "generalist-d"])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per learner (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                        help="runtime.precision values to time, each recipe in each (bf16: autocast of the passes)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every recipe, e.g. data.batch_size=256")
    args = parser.parse_args()
    results = [time_recipe(r, args.device, args.steps, args.warmup, args.threads, args.overrides, p)
               for r in args.recipes for p in args.precisions]

    device = results[0]["device"]
    print(f"# epoch time from {args.steps} timed steps (median) after {args.warmup} warm-up, per learner; "
          f"{describe_device(device)}; torch {torch.__version__}, {args.threads} CPU thread(s)")
    if args.overrides:
        print(f"# overrides: {' '.join(args.overrides)}")
    print("| recipe | precision | model | batch | learner | s / step | images / s | sync s | epoch s, one device | "
          "epoch s, device per learner |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        steps = r["step_seconds"]
        sync = r["sync_seconds"] or 0.0
        spe = r["steps_per_epoch"]
        one_device = spe * (sum(steps.values()) + sync)
        per_learner = spe * (max(steps.values()) + sync)
        for i, (name, seconds) in enumerate(steps.items()):
            tail = (f"{r['sync_seconds']:.4f}" if r["sync_seconds"] is not None else "-",
                    f"{one_device:.0f}", f"{per_learner:.0f}") if i == 0 else ("", "", "")
            print(f"| {r['recipe'] if i == 0 else ''} | {r['precision'] if i == 0 else ''} | "
                  f"{r['model'] if i == 0 else ''} | "
                  f"{r['batch'] if i == 0 else ''} | {name} | {seconds:.4f} | {r['batch'] / seconds:.0f} | "
                  + " | ".join(tail) + " |")
    for r in results:
        if any(path != "eager" for path in r["step_paths"].values()):
            print(f"# {r['recipe']} {r['precision']} steps: "
                  + ", ".join(f"{name} {path}" for name, path in r["step_paths"].items()))
    for r in results:
        if r["round_seconds"] is not None:
            k, alone = len(r["step_seconds"]), sum(r["step_seconds"].values())
            print(f"# {r['recipe']} {r['precision']}: a round of its {k} learners side by side takes "
                  f"{r['round_seconds']:.4f} s, {r['round_seconds'] / alone:.2f} x their steps one after another "
                  f"(run_round, learner streams {'on' if r['learner_streams'] else 'off'})")
    by_recipe = {(r["recipe"], r["precision"]): r for r in results}
    for recipe in args.recipes:
        if (recipe, "fp32") in by_recipe and (recipe, "bf16") in by_recipe:
            fp32, bf16 = (sum(by_recipe[(recipe, p)]["step_seconds"].values()) for p in ("fp32", "bf16"))
            print(f"# {recipe}: bf16 steps take {bf16 / fp32:.2f} x the time of fp32 steps (summed over learners)")
    print(f"# epoch s = steps per epoch ({', '.join(str(r['steps_per_epoch']) for r in results)}) x (step time "
          "summed over learners, or of the slowest learner, + one sync per step as in the mixing phase at "
          "sync_every = 1); an estimate, validation excluded")


if __name__ == "__main__":
    main()
