"""How many GPUs each learner asks Ray for when the config leaves it open: a pure function of the config and
the cluster's GPU count, so the choice is testable without Ray and printed and stored the same everywhere."""

from __future__ import annotations

import dataclasses
import math

from generalist.config import RunConfig

__all__ = ["RAY_RESOURCE_STEP", "resolve_gpus", "with_gpus"]

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
