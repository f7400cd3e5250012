"""Evaluation sharded over Ray tasks: the blocks of points are split among tasks and the tables merged.

Every block's numbers depend only on the model, its points and the EvalSpec (generalist.evaluation), so the
merged table equals one process's, given the same torch thread count (CPU kernels may sum in another order
with more threads). The model and the points go into the object store once; the tasks are gathered with one
`ray.get`. With a state folder on storage every task can see, a retried or rerun task skips finished blocks.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from generalist.data import TensorData
from generalist.errors import BackendError, GeneralistError
from generalist.evaluation.model_loading import build_eval_model, load_weights
from generalist.evaluation.run import PointResults, block_starts, evaluate_points, merge_results
from generalist.evaluation.spec import EvalSpec


def shard_blocks(starts: list[int], shards: int) -> list[list[int]]:
    """Contiguous, nearly equal groups of block starts, at most `shards` of them, none empty."""
    shards = max(1, min(shards, len(starts)))
    size, extra = divmod(len(starts), shards)
    groups, first = [], 0
    for k in range(shards):
        count = size + (1 if k < extra else 0)
        groups.append(starts[first:first + count])
        first += count
    return groups


def _evaluate_shard(state: dict, architecture: str, dataset: str, points: TensorData, spec: dict,
                    blocks: list[int], state_dir: str | None, threads: int, device: str) -> PointResults:
    """One task: rebuild the model from its weights and evaluate its blocks (runs in a Ray worker)."""
    torch.set_num_threads(threads)
    model, _ = build_eval_model(architecture, dataset)
    load_weights(model, state, f"the {architecture} weights sent to this shard", architecture)
    return evaluate_points(model.to(device), points, EvalSpec.from_dict(spec), device=device, state_dir=state_dir,
                           blocks=blocks)


def evaluate_sharded(state: dict, architecture: str, dataset: str, points: TensorData, spec: EvalSpec, *,
                     shards: int, state_dir: str | Path | None = None, address: str | None = None,
                     threads: int = 1, device: str = "cpu", cpus_per_shard: float | None = None,
                     gpus_per_shard: float = 0.0, timeout_s: float = 7 * 24 * 3600,
                     max_retries: int = 2) -> PointResults:
    """evaluate_points over `shards` Ray tasks; the same PointResults as one process with `threads` threads.

    state: the model's state_dict; points: the test points (uint8), n = spec.n or all. Uses the running Ray
    if there is one, else connects to `address` (or starts a local Ray) and shuts it down afterwards.
    A task that fails is retried `max_retries` times (resuming from `state_dir`); an error of ours inside a
    task (for example AttackCheckError) is raised as itself, anything else as BackendError."""
    import ray

    n = len(points) if spec.n is None else spec.n
    groups = shard_blocks(block_starts(n, spec.batch_size), shards)
    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="error")
        else:
            ray.init(num_cpus=max(1, int(shards * (cpus_per_shard or threads))), include_dashboard=False,
                     log_to_driver=False, logging_level="error")
    try:
        task = ray.remote(_evaluate_shard).options(num_cpus=cpus_per_shard or threads, num_gpus=gpus_per_shard,
                                                   max_retries=max_retries)
        cpu_state = {k: v.detach().cpu() for k, v in state.items()}
        state_ref, points_ref = ray.put(cpu_state), ray.put(TensorData(points.x[:n], points.y[:n]))
        refs = [task.remote(state_ref, architecture, dataset, points_ref, spec.to_dict(), group,
                            None if state_dir is None else str(state_dir), threads, device) for group in groups]
        try:
            results = ray.get(refs, timeout=timeout_s)
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, GeneralistError):
                raise cause from None
            raise BackendError(f"an evaluation shard failed: {str(error).splitlines()[0]}") from None
        except ray.exceptions.GetTimeoutError:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise BackendError(f"the evaluation shards did not finish within {timeout_s:.0f} s") from None
        return merge_results(results)
    finally:
        if started_here:
            ray.shutdown()
