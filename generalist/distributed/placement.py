"""How many GPUs each learner asks Ray for, and how many learners share a worker process, when the config
leaves them open: pure functions of the config and the cluster's GPU count, so the choices are testable without
Ray and printed and stored the same everywhere."""

from __future__ import annotations

import dataclasses
import math

from generalist.config import RunConfig
from generalist.errors import ConfigError

__all__ = ["RAY_RESOURCE_STEP", "resolve_gpus", "with_gpus", "resolve_grouping", "with_grouping", "worker_groups",
           "config_groups", "worker_resources"]

# Ray keeps resource amounts to 4 decimals; a share must be a multiple of this, rounded down so K shares fit.
RAY_RESOURCE_STEP = 1e-4


def _round_down(share: float) -> float:
    return math.floor(share / RAY_RESOURCE_STEP + 1e-9) * RAY_RESOURCE_STEP


def resolve_gpus(config: RunConfig, cluster_gpus: float) -> tuple[float, str]:
    """(gpus_per_learner, one line saying the choice) for a cluster with `cluster_gpus` GPUs in all.

    An explicit `runtime.gpus_per_learner` wins. Left at None (automatic), with K learners and G GPUs:
    - runtime.device=cpu, or device=auto and G = 0: 0, the learners run on CPUs;
    - G >= K: 1, every learner has its own GPU;
    - 0 < G < K: a share, 1 / ceil(K / floor(G)), so the shares pack whole onto the GPUs (Ray never splits a
      learner's share across two GPUs: with 2 GPUs and 3 learners, 2/3 each would leave the third without room,
      1/2 each fits); below one whole GPU, G / K. Rounded down to Ray's 1e-4 resolution;
    - runtime.device=cuda and G = 0: 1, so the capacity check waits for GPUs (`runtime.wait_for_resources_s`,
      an autoscaling cluster) or says how many are missing, instead of silently training on CPUs.
    """
    runtime, k = config.runtime, len(config.learners)
    gpus = float(cluster_gpus)
    if runtime.gpus_per_learner is not None:
        unused = " (unused: runtime.device=cpu)" if runtime.device == "cpu" and runtime.gpus_per_learner else ""
        return float(runtime.gpus_per_learner), (
            f"placement: runtime.gpus_per_learner={runtime.gpus_per_learner:g} as set{unused}; "
            f"{k} learner(s), {gpus:g} GPU(s) in the cluster")
    if runtime.device == "cpu":
        return 0.0, f"placement: runtime.device=cpu: {k} learner(s) on CPUs, no GPU asked for"
    if gpus <= 0:
        if runtime.device == "cuda":
            return 1.0, (f"placement: runtime.device=cuda but the cluster has no GPU yet: asking for one GPU per "
                         f"learner ({k}); set runtime.device=auto to train on CPUs instead")
        return 0.0, f"placement: no GPU in the cluster: {k} learner(s) on CPUs"
    if gpus >= k:
        return 1.0, f"placement: {k} learner(s), one GPU each ({gpus:g} GPU(s) in the cluster)"
    whole = math.floor(gpus)
    share = _round_down(1.0 / math.ceil(k / whole) if whole >= 1 else gpus / k)
    per_gpu = round(1 / share) if whole >= 1 else k
    return share, (f"placement: {k} learners share {gpus:g} GPU(s): {share:g} GPU each (up to {per_gpu} learners "
                   f"per GPU; each step is slower than on a GPU of its own; set runtime.gpus_per_learner to choose)")


def with_gpus(config: RunConfig, gpus_per_learner: float) -> RunConfig:
    """A copy of `config` whose runtime.gpus_per_learner is the resolved value (what the workers must see)."""
    return dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, gpus_per_learner=gpus_per_learner))


def resolve_grouping(config: RunConfig) -> tuple[int, str]:
    """(learners_per_worker, one line saying the choice), for a config whose gpus_per_learner is resolved.

    An explicit `runtime.learners_per_worker` wins (at most K). Left at None (automatic): the learners that share
    a GPU share one worker process (1 / gpus_per_learner of them, as resolve_gpus packs them), because processes
    on one GPU never overlap their kernels (no MPS) and each step pays a context switch: in one process they
    train one after another at in-process speed and mix with a device-local fold. Otherwise one learner per
    worker: on CPUs, separate processes train on separate cores at once."""
    runtime, k = config.runtime, len(config.learners)
    if runtime.learners_per_worker is not None:
        n = min(runtime.learners_per_worker, k)
        return n, f"grouping: runtime.learners_per_worker={runtime.learners_per_worker} as set: {_describe(k, n)}"
    share = runtime.gpus_per_learner or 0.0
    if 0 < share < 1 and runtime.device != "cpu":
        n = min(k, max(1, round(1 / share)))
        return n, f"grouping: the learners that share a GPU share a worker process: {_describe(k, n)}"
    return 1, f"grouping: one worker process per learner ({k})"


def _describe(k: int, n: int) -> str:
    groups = worker_groups(k, n)
    return f"{len(groups)} worker(s) for {k} learner(s), {[len(g) for g in groups]} learner(s) each"


def worker_groups(num_learners: int, learners_per_worker: int) -> list[list[int]]:
    """The learner indices each worker (Ray Train world rank) holds: consecutive runs of `learners_per_worker`,
    so learner order is worker order, then order within the worker (the fold's order)."""
    n = max(1, learners_per_worker)
    return [list(range(first, min(first + n, num_learners))) for first in range(0, num_learners, n)]


def config_groups(config: RunConfig) -> list[list[int]]:
    """The worker groups of a config whose placement is resolved (with_grouping); one learner per worker if not."""
    return worker_groups(len(config.learners), config.runtime.learners_per_worker or 1)


def worker_resources(config: RunConfig) -> tuple[float, float]:
    """(CPUs, GPUs) each worker asks for: its largest group's learners' shares together. Ray takes one amount for
    every worker of a group and refuses GPU amounts above 1 that are not whole."""
    runtime = config.runtime
    largest = max(len(g) for g in config_groups(config))
    gpus = _round_down(runtime.gpus_per_learner * largest + RAY_RESOURCE_STEP / 2) if runtime.gpus_per_learner else 0.0
    if gpus > 1 and gpus != int(gpus):
        raise ConfigError(
            f"runtime.learners_per_worker={largest} x runtime.gpus_per_learner={runtime.gpus_per_learner:g} = "
            f"{gpus:g} GPUs per worker: Ray takes a fraction <= 1 or a whole number; choose values whose product is")
    return runtime.cpus_per_learner * largest, gpus


def with_grouping(config: RunConfig, learners_per_worker: int) -> RunConfig:
    """A copy of `config` whose runtime.learners_per_worker is the resolved value (what the workers must see)."""
    return dataclasses.replace(config, runtime=dataclasses.replace(config.runtime,
                                                                   learners_per_worker=learners_per_worker))
