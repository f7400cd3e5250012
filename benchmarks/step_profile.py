"""One training step under torch.profiler: how many operations and kernels a step launches, how busy the device
is, and where the time goes, for each base learner of a recipe.

Claim: for each learner, over `--steps` profiled steps after `--warmup` untimed ones (real batches, the framework's
own Learner.run_steps, one step per call, each ending in the step's host sync):
- ms / step: the median wall time of `--steps` steps timed without the profiler;
- ops / step: the aten operations dispatched to the device (the outermost ones, from Python and from autograd's
  backward; on a GPU each launches one or more kernels from the host, one after another);
- kernels / step (GPU): the device kernels the profiler recorded;
- device busy (GPU): the union of the kernels' intervals over the wall time of the profiled steps. The rest is the
  device waiting for the host (Python, dispatch, launches). The profiler slows the host, so this is a lower bound;
- the ten operations (CPU) or kernels (GPU) with the most self time, summed over the profiled steps. On a CPU under
  deterministic algorithms, `aten::fill_` is torch filling new memory (`fill_uninitialized_memory`), the first
  touch of freshly mapped pages: with the fill off that page-fault time moves into the next kernel (measured on the
  2-core machine, 2026-12-04, generalist-d-small: the linf step took 1.05x, the natural one 0.92x the time with the
  fill on, the bits unchanged), so it is not a saving.
- BatchNorm: the self time of the BatchNorm operations (CPU) or kernels (GPU, cuDNN's `bn_*` and PyTorch's
  `batch_norm_*`), ms per step and as a share of all self time. It bounds what folding BatchNorm into the
  convolutions of the eval-mode attack could save (issue: the GPU step near the hardware limit): that saves at most
  the attack's share, which is about the PGD learner's BatchNorm time less the natural learner's (the same training
  pass without the attack's ten eval-mode forward and input-gradient passes).
This is the "before" of a step without Python between kernels: a graph-captured step should launch the same
kernels with the device busy most of the time.

    PYTHONPATH=. GENERALIST_DATA=/path/to/data python benchmarks/step_profile.py --device cuda --recipes pgd-at natural
    PYTHONPATH=. python benchmarks/step_profile.py --device cpu --recipes pgd-at-small --steps 2 --warmup 1 --threads 1
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import re
import time

import torch
from torch.profiler import ProfilerActivity, profile

from generalist.config import apply_overrides
from generalist.learner import Learner
from generalist.recipes import get_recipe
from generalist.repro import resolve_device, set_determinism
from generalist.training import prepare_run_data

from epoch_time import describe_device, median_seconds  # noqa: E402 - the neighbour script, run from benchmarks/


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def union_length(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of [start, end) intervals (kernels of several streams may overlap)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def is_outermost_op(event) -> bool:
    """An aten operation called from Python or autograd, not one nested in another aten operation."""
    parent = event.cpu_parent
    return event.name.startswith("aten::") and (parent is None or not parent.name.startswith("aten::"))


def is_batch_norm(name: str) -> bool:
    """An operation (aten::native_batch_norm, aten::native_batch_norm_backward, ...) or a kernel (cuDNN's
    bn_fw_inf_*, bn_fw_tr_*, bn_bw_*; PyTorch's batch_norm_* and the elementwise kernels of batch_norm_elementwise)
    of BatchNorm."""
    lowered = name.lower()
    return "batch_norm" in lowered or re.search(r"(^|[^a-z0-9])bn_(fw|bw)", lowered) is not None


def profile_learner(learner: Learner, steps_per_epoch: int, steps: int, warmup: int, device: torch.device) -> dict:
    position = itertools.count()  # successive steps of epoch 1, wrapping around

    def step():
        learner.run_steps(1, next(position) % steps_per_epoch, 1)

    for _ in range(warmup):
        step()
    seconds_per_step = median_seconds(step, steps)
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        profiled_wall_us = (time.perf_counter() - start) * 1e6
    events = prof.events()
    ops = [e for e in events if e.device_type.name == "CPU" and is_outermost_op(e)]
    kernels = [e for e in events if e.device_type.name == "CUDA"]
    self_us = collections.Counter()
    if on_gpu:
        for kernel in kernels:
            self_us[kernel.name] += kernel.time_range.end - kernel.time_range.start
    else:
        for average in prof.key_averages():
            if average.key.startswith("aten::"):
                self_us[average.key] += average.self_cpu_time_total
    total_us = sum(self_us.values())
    batch_norm_us = sum(us for name, us in self_us.items() if is_batch_norm(name))
    busy = union_length([(k.time_range.start, k.time_range.end) for k in kernels]) / profiled_wall_us if on_gpu \
        else None
    return {"learner": learner.name, "ms_per_step": 1e3 * seconds_per_step, "ops_per_step": len(ops) / steps,
            "kernels_per_step": len(kernels) / steps if on_gpu else None, "busy": busy,
            "batch_norm_ms": batch_norm_us / steps / 1e3,
            "batch_norm_share": batch_norm_us / total_us if total_us else 0.0,
            "top": [(name, us / steps / 1e3) for name, us in self_us.most_common(10)]}


def profile_recipe(recipe: str, device_name: str, steps: int, warmup: int, threads: int,
                   overrides: list[str]) -> list[dict]:
    config = apply_overrides(get_recipe(recipe), ["runtime.backend=local", f"runtime.device={device_name}",
                                                  f"runtime.threads_per_learner={threads}", *overrides])
    device = resolve_device(config.runtime.device)
    set_determinism(config.runtime.use_deterministic(device.type), config.runtime.threads)
    data = prepare_run_data(config)
    rows = []
    for k in range(len(config.learners)):
        learner = Learner(config, k, data.initial_state, data.stream, data.model_kwargs, device)
        row = profile_learner(learner, data.stream.steps_per_epoch, steps, warmup, device)
        rows.append({"recipe": recipe, "model": config.model.name, "batch": config.data.batch_size,
                     "precision": config.runtime.precision, **row})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["pgd-at", "natural"])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    parser.add_argument("--steps", type=int, default=5, help="steps timed, then the same number profiled")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("overrides", nargs="*", help="config overrides for every recipe, e.g. runtime.precision=bf16")
    args = parser.parse_args(argv)
    rows = [row for recipe in args.recipes
            for row in profile_recipe(recipe, args.device, args.steps, args.warmup, args.threads, args.overrides)]
    on_gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    print(f"# one step per learner under torch.profiler: {args.steps} steps timed and {args.steps} profiled after "
          f"{args.warmup} warm-up; {describe_device('cuda' if on_gpu else 'cpu')}; torch {torch.__version__}, "
          f"{args.threads} CPU thread(s)" + (f"; overrides: {' '.join(args.overrides)}" if args.overrides else ""))
    print("| recipe | model | batch | precision | learner | ms / step | ops / step | kernels / step | device busy "
          "| BatchNorm ms / step | BatchNorm share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kernels = f"{r['kernels_per_step']:.0f}" if r["kernels_per_step"] is not None else "-"
        busy = f"{100 * r['busy']:.0f} %" if r["busy"] is not None else "-"
        print(f"| {r['recipe']} | {r['model']} | {r['batch']} | {r['precision']} | {r['learner']} | "
              f"{r['ms_per_step']:.1f} | {r['ops_per_step']:.0f} | {kernels} | {busy} | {r['batch_norm_ms']:.2f} | "
              f"{100 * r['batch_norm_share']:.0f} % |")
    what = "kernels" if on_gpu else "aten operations"
    for r in rows:
        print(f"#### {r['recipe']} / {r['learner']}: the ten {what} with the most self time, ms per step")
        print(f"| {what[:-1]} | ms / step |")
        print("|---|---|")
        for name, ms in r["top"]:
            print(f"| `{name[:90]}` | {ms:.2f} |")


if __name__ == "__main__":
    main()
