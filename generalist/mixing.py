"""The global learner's rule: schedules, EMAs and interpolation as functions over state dicts.

Everything here is plain arithmetic on `dict[str, Tensor]` (a model's `state_dict()`), so the same code
runs inside one process, in a Ray actor, or in a test that checks it against the reference algorithm.

Schedules follow the reference code: they are evaluated at the 1-based epoch `e` and stay constant
within an epoch (PAPER.md, "The reference algorithm").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from generalist.config import RunConfig

StateDict = dict[str, torch.Tensor]


def piecewise_linear(x: float, knots: Sequence[float], values: Sequence[float]) -> float:
    """Linear interpolation through (knots, values), flat outside them (numpy.interp's rule)."""
    if x <= knots[0]:
        return float(values[0])
    for (x0, x1), (y0, y1) in zip(zip(knots, knots[1:]), zip(values, values[1:])):
        if x <= x1:
            return float(y0 + (x - x0) * (y1 - y0) / (x1 - x0))
    return float(values[-1])


def lr_factor(epoch: int, config: RunConfig) -> float:
    """Multiplier of every learner's base lr at 1-based `epoch` (1, 1, 0.1, 0.01 at 0, E/3, 2E/3, E)."""
    epochs = config.schedule.epochs
    return piecewise_linear(epoch, [k * epochs for k in config.schedule.lr_knots], config.schedule.lr_factors)


def mixing_weights(epoch: int, config: RunConfig) -> list[float]:
    """gamma(e): one weight per learner, summing to 1.

    Before `mix_start` all weight is on the anchor; from there the anchor's weight moves linearly to its
    final value and the rest is shared among the others in proportion to their final weights. With two
    learners this is exactly the reference's (beta, 1 - beta)."""
    epochs = config.schedule.epochs
    names = config.learner_names
    anchor = names.index(config.mixing.anchor)
    finals = [learner.final_weight for learner in config.learners]
    anchor_weight = piecewise_linear(epoch, [0.0, config.mixing.mix_start * epochs, float(epochs)],
                                     [1.0, 1.0, finals[anchor]])
    others = 1.0 - finals[anchor]
    weights = []
    for k, final in enumerate(finals):
        if k == anchor:
            weights.append(anchor_weight)
        else:
            weights.append((1 - anchor_weight) * (final / others) if others > 0 else 0.0)
    return weights


def is_communication_epoch(epoch: int, config: RunConfig) -> bool:
    """Redistribution happens at the syncs of epochs e >= redistribute_start * E with e % every == 0."""
    mixing = config.mixing
    return (mixing.redistribute and epoch >= mixing.redistribute_start * config.schedule.epochs
            and epoch % mixing.redistribute_every == 0)


def ema_decay(step: int, max_decay: float = 0.999) -> float:
    """Warm-up decay of the step-th EMA update (0-based): min(max_decay, (s + 1) / (s + 10))."""
    return min(max_decay, (step + 1) / (step + 10))


def ema_decay_product(first_step: int, n: int, max_decay: float = 0.999) -> float:
    """The decay of n consecutive EMA updates folded into one: prod of ema_decay(s) (d ** n once warm)."""
    product = 1.0
    for s in range(first_step, first_step + n):
        product *= ema_decay(s, max_decay)
    return product


def is_averaged(tensor: torch.Tensor) -> bool:
    """Floating tensors (weights, BN running mean/var) are averaged; integer buffers
    (BN num_batches_tracked) are counters and are copied, never given a float average."""
    return tensor.is_floating_point()


@torch.no_grad()
def ema_update_(shadow: StateDict, value: StateDict, decay: float) -> None:
    """shadow <- decay * shadow + (1 - decay) * value, in place; integer buffers take value's."""
    for name, s in shadow.items():
        v = value[name]
        if is_averaged(s):
            s.mul_(decay)
            s.add_(v * (1 - decay))
        else:
            s.copy_(v)


@torch.no_grad()
def interpolate(states: Sequence[StateDict], weights: Sequence[float]) -> StateDict:
    """sum_k weights[k] * states[k] for floating tensors; integer buffers from the heaviest learner.

    A weight of exactly 0 still multiplies (0 * x), so `beta == 0` means "natural learner only"
    rather than the reference code's silent fall-back to "AT only"."""
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    if not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
        raise ValueError(f"mixing weights must sum to 1, got {list(weights)}")
    heaviest = max(range(len(weights)), key=lambda k: weights[k])
    out: StateDict = {}
    for name, first in states[0].items():
        if is_averaged(first):
            total = weights[0] * first
            for w, state in zip(weights[1:], states[1:]):
                total = total + w * state[name]
            out[name] = total
        else:
            out[name] = states[heaviest][name].clone()
    return out


def clone_state(state: StateDict) -> StateDict:
    return {name: t.detach().clone() for name, t in state.items()}


def flat_clone(state: StateDict) -> StateDict:
    """A copy of `state` whose floating tensors are views into one contiguous buffer, in state order.

    The same values as clone_state; the layout lets a sync hand the whole state on as one array without
    packing it first (generalist.distributed.flat_state). States with more than one floating dtype get
    clone_state's layout."""
    floating = [t for t in state.values() if t.is_floating_point()]
    if not floating or len({t.dtype for t in floating}) > 1:
        return clone_state(state)
    with torch.no_grad():
        buffer = torch.cat([t.detach().reshape(-1) for t in floating])
    views = iter(buffer.split([t.numel() for t in floating]))
    return {name: next(views).view(t.shape) if t.is_floating_point() else t.detach().clone()
            for name, t in state.items()}


class GlobalLearner:
    """The global model E_G: an EMA of the interpolation of the learners' EMAs.

    `sync` is called once every `n` optimiser steps with the learners' current EMA states; it folds the
    n steps into one EMA update with decay prod(d_s) (PAPER.md, "Distributed form"). With n = 1 it is the
    reference algorithm's per-iteration `E_G.update(beta * E_AT + (1 - beta) * E_ST)`."""

    def __init__(self, config: RunConfig, initial_state: StateDict, copy: bool = True):
        self.config = config
        # copy=False keeps the caller's tensors (views into one flat buffer, for the Ray coordinator).
        self.state = clone_state(initial_state) if copy else initial_state
        self.ema_steps = 0  # updates folded in so far (the warm-up counter s)

    def sync(self, learner_states: Sequence[StateDict], epoch: int, n_steps: int) -> bool:
        """Fold n_steps of EMA into the global state; return whether learners must load it now."""
        weights = mixing_weights(epoch, self.config)
        mixed = interpolate(learner_states, weights)
        decay = ema_decay_product(self.ema_steps, n_steps, self.config.mixing.ema_max_decay)
        ema_update_(self.state, mixed, decay)
        self.ema_steps += n_steps
        return is_communication_epoch(epoch, self.config)

    def state_dict(self) -> dict:
        return {"state": self.state, "ema_steps": self.ema_steps}

    @torch.no_grad()
    def load_state_dict(self, saved: dict) -> None:
        for name, tensor in self.state.items():  # in place: whoever holds views of the state keeps them
            tensor.copy_(saved["state"][name])
        self.ema_steps = int(saved["ema_steps"])
