"""BatchNorm running statistics of an interpolated network, re-estimated from data.

The variance of an interpolation of networks is not the interpolation of their variances (the effect that
torch.optim.swa_utils.update_bn and REPAIR correct), and Generalist's learners see different inputs (clean for
the natural learner, adversarial for the AT ones). Interpolating `running_mean` / `running_var` like weights,
as the reference does, gives the global learner statistics that match none of its layers' real activations.
`reestimate_bn_` recomputes them: reset, then train-mode forward passes without gradients over a fixed set of
training batches, averaging the batch statistics with equal weight (BatchNorm's `momentum=None`). The result
depends only on the weights and the batches, not on the statistics the model held before, so re-estimating
twice gives the same bits. Nothing but the running statistics changes (`num_batches_tracked` is restored).

Which inputs: those the learners train on, in proportion to their mixing weights (`reestimate_global_bn_`).
Clean inputs alone are not enough, measured: an MNIST PGD-AT model (eps 0.3) re-estimated on clean batches kept
its clean accuracy and lost its robustness (validation PGD 53.6 % with the learner's own statistics, 9.4 % with
statistics from clean batches), because BatchNorm then normalises adversarial inputs with the statistics of
clean ones. So each calibration batch is split among the learners by weight, and a learner's share is replaced
by its training attack's points, crafted against the global model with statistics from a first, clean pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from generalist.attacks import pgd
from generalist.config import AttackConfig
from generalist.data import TrainStream
from generalist.threat import get_threat


def batchnorm_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """(name, module) of every BatchNorm layer that keeps running statistics."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats]


def batchnorm_buffer_names(model: nn.Module) -> frozenset[str]:
    """The state_dict keys of every BatchNorm buffer: running_mean, running_var, num_batches_tracked."""
    return frozenset(f"{name}.{buffer}" if name else buffer for name, m in batchnorm_layers(model)
                     for buffer, _ in m.named_buffers(recurse=False))


def calibration_batches(stream: TrainStream, n_batches: int,
                        device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first `n_batches` training batches (x, y) of the run's stream (its augmentation included), in
    order: data epoch 0 from its first step, continuing into the next epochs when one is too short. The same
    inputs for every backend and every process, so the re-estimated statistics are the same bits."""
    for k in range(n_batches):
        yield stream.batch(k // stream.steps_per_epoch, k % stream.steps_per_epoch, device)


def split_by_weight(n: int, weights: list[float]) -> list[int]:
    """n items shared in proportion to `weights` (largest remainder, ties to the first): counts summing to n."""
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(weights)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in by_remainder[: n - sum(counts)]:
        counts[k] += 1
    return counts


def reestimate_global_bn_(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                          shares: list[tuple[float, AttackConfig | None]], generator: torch.Generator) -> nn.Module:
    """Re-estimate the global learner's BatchNorm statistics on its learners' training inputs, in place.

    shares: one (mixing weight, training attack or None for clean inputs) per learner. Pass 1 re-estimates on
    the clean batches; where a learner with an attack carries weight, pass 2 splits every batch among the
    learners by weight (split_by_weight), replaces each attacked share with PGD points against the model (eval
    mode, pass-1 statistics; the attack's eps, step size, steps and random start), and re-estimates on those."""
    batches = list(batches)
    reestimate_bn_(model, (x for x, _ in batches))
    if not any(w > 0 and attack is not None for w, attack in shares):
        return model
    was_training = model.training
    model.eval()
    mixed = []
    try:
        for x, y in batches:
            parts, first = [], 0
            for (weight, attack), count in zip(shares, split_by_weight(len(x), [w for w, _ in shares])):
                xs, ys = x[first: first + count], y[first: first + count]
                first += count
                if count and attack is not None:
                    xs = pgd(model, xs, ys, get_threat(attack.norm, attack.eps), steps=attack.steps,
                             step_size=attack.step_size, random_start=attack.random_start, generator=generator)
                parts.append(xs)
            mixed.append(torch.cat(parts))
    finally:
        model.train(was_training)
    return reestimate_bn_(model, mixed)


@torch.no_grad()
def reestimate_bn_(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Recompute every BatchNorm layer's running mean and variance from `batches` (x: (B, C, H, W) in [0, 1]),
    in place; weights, num_batches_tracked and the model's train/eval mode are left as they were."""
    layers = batchnorm_layers(model)
    if not layers:
        return model
    saved = {name: (m.momentum, m.num_batches_tracked.clone()) for name, m in layers}
    was_training = model.training
    for _, m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts the same
    model.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += 1
    finally:
        for name, m in layers:
            m.momentum, counter = saved[name]
            m.num_batches_tracked.copy_(counter)
        model.train(was_training)
    if seen == 0:
        raise ValueError("no batches to re-estimate the BatchNorm statistics from")
    return model
