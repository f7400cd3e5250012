"""The global learner's rule: schedules, EMAs and interpolation as functions over state dicts.

Everything here is plain arithmetic on tensors: a model's `state_dict()`, or the same state packed into one
buffer (generalist.packed_state), so the same code runs inside one process, inside every learner of the
Ray backend, or in a test that checks it against the reference algorithm.

Schedules follow the reference code: they are evaluated at the 1-based epoch `e` and stay constant
within an epoch (PAPER.md, "The reference algorithm"). That epoch is a *clock epoch* (a "tick"): the data epoch
by default, or one of `schedule.clock_epochs` equal slices of the run's optimiser steps (`clock_tick`), so that
a short run keeps the paper's schedule in optimiser steps, not only in epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from generalist.config import RunConfig
from generalist.packed_state import StateDict, StateLayout


def piecewise_linear(x: float, knots: Sequence[float], values: Sequence[float]) -> float:
    """Linear interpolation through (knots, values), flat outside them (numpy.interp's rule)."""
    if x <= knots[0]:
        return float(values[0])
    for (x0, x1), (y0, y1) in zip(zip(knots, knots[1:]), zip(values, values[1:])):
        if x <= x1:
            return float(y0 + (x - x0) * (y1 - y0) / (x1 - x0))
    return float(values[-1])


def clock_tick(config: RunConfig, global_step: int, steps_per_epoch: int) -> int:
    """The 1-based clock epoch of the optimiser step with 0-based index `global_step`.

    Data-epoch clock: global_step // steps_per_epoch + 1. Step clock: the run's T = epochs * steps_per_epoch
    steps are cut into C = clock_epochs slices, step s in slice s * C // T (integer arithmetic: no rounding
    drift, and the slices differ in length by at most one step)."""
    schedule = config.schedule
    if schedule.clock_epochs is None:
        return global_step // steps_per_epoch + 1
    return global_step * schedule.clock_epochs // (schedule.epochs * steps_per_epoch) + 1


def tick_starts(config: RunConfig, steps_per_epoch: int) -> list[int]:
    """The 0-based global step at which each clock epoch begins (ticks 1..L), for cutting rounds there."""
    schedule = config.schedule
    total = schedule.epochs * steps_per_epoch
    if schedule.clock_epochs is None:
        return [k * steps_per_epoch for k in range(schedule.epochs)]
    c = schedule.clock_epochs
    return [-(-k * total // c) for k in range(c)]  # the first s with s * C >= k * T: ceil(k * T / C)


def ema_max_decay(config: RunConfig, steps_per_epoch: int) -> float:
    """The EMAs' maximum decay for this run's length.

    Data-epoch clock: mixing.ema_max_decay. Step clock: the decay whose horizon 1 / (1 - d) is the same share
    of training as the reference's, `1 - (1 - ema_max_decay) * C * reference_steps_per_epoch / T` (0.999 over
    46,920 steps becomes 0.99583 over 11,250). Because the warm-up min(d, (s + 1) / (s + 10)) reaches d at
    s = 9 / (1 - d) - 10, the warm-up is rescaled with it."""
    schedule, d = config.schedule, config.mixing.ema_max_decay
    if schedule.clock_epochs is None:
        return d
    total = schedule.epochs * steps_per_epoch
    return max(0.0, 1 - (1 - d) * schedule.clock_epochs * schedule.reference_steps_per_epoch / total)


def lr_factor(epoch: int, config: RunConfig) -> float:
    """Multiplier of every learner's base lr at 1-based clock epoch `epoch` (1, 1, 0.1, 0.01 at 0, L/3, 2L/3,
    L for the default knots, L the clock's length)."""
    length = config.schedule.clock_length
    return piecewise_linear(epoch, [k * length for k in config.schedule.lr_knots], config.schedule.lr_factors)


def mixing_weights(epoch: int, config: RunConfig) -> list[float]:
    """gamma(e): one weight per learner, summing to 1.

    Before `mix_start` all weight is on the anchor; from there the anchor's weight moves linearly to its
    final value and the rest is shared among the others in proportion to their final weights. With two
    learners this is exactly the reference's (beta, 1 - beta). `epoch` is a 1-based clock epoch."""
    epochs = config.schedule.clock_length
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
    """Redistribution happens at the syncs of clock epochs e >= redistribute_start * L with e % every == 0."""
    mixing = config.mixing
    return (mixing.redistribute and epoch >= mixing.redistribute_start * config.schedule.clock_length
            and epoch % mixing.redistribute_every == 0)


def mixing_plan(config: RunConfig) -> dict[int, tuple[list[float], bool]]:
    """clock epoch -> (gamma, whether it is a communication epoch): what every sync of that clock epoch does."""
    return {e: (mixing_weights(e, config), is_communication_epoch(e, config))
            for e in range(1, config.schedule.clock_length + 1)}


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


def weighted_sum(tensors: Sequence[torch.Tensor | None], weights: Sequence[float]) -> torch.Tensor:
    """sum_k weights[k] * tensors[k], in learner order, over the terms whose weight is not 0.

    A term of weight exactly 0 is left out rather than multiplied by 0: a learner that carries no weight
    (every learner but the anchor before mix_start) need not even send its state (tensors[k] may be None).
    A single term of weight 1 is returned as it is (1 * x is x). `beta == 0` therefore means "natural
    learner only", not the reference code's silent fall-back to "AT only"."""
    terms = [(w, t) for w, t in zip(weights, tensors) if w != 0]
    if not terms:
        raise ValueError(f"mixing weights are all zero: {list(weights)}")
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    (w0, t0), *rest = terms
    total = w0 * t0
    for w, t in rest:
        total = total + w * t
    return total


def heaviest(weights: Sequence[float]) -> int:
    """The learner whose integer buffers (BN counters) the global learner takes: the first largest weight."""
    return max(range(len(weights)), key=lambda k: weights[k])


def check_weights(weights: Sequence[float], count: int) -> None:
    if count != len(weights):
        raise ValueError(f"{count} states but {len(weights)} weights")
    if not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
        raise ValueError(f"mixing weights must sum to 1, got {list(weights)}")


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
    """sum_k weights[k] * states[k] for floating tensors (weighted_sum's rule); integer buffers from the
    heaviest learner. The state-dict form of what GlobalLearner does over packed buffers."""
    check_weights(weights, len(states))
    top = heaviest(weights)
    return {name: weighted_sum([s[name] for s in states], weights).clone() if is_averaged(first)
            else states[top][name].clone() for name, first in states[0].items()}


def clone_state(state: StateDict) -> StateDict:
    return {name: t.detach().clone() for name, t in state.items()}


class GlobalLearner:
    """The global model E_G: an EMA of the interpolation of the learners' EMAs, in one packed buffer.

    `sync` is called once every `n` optimiser steps with the learners' EMA buffers (StateLayout of the
    model); it folds the n steps into one EMA update with decay prod(d_s) (PAPER.md, "Distributed form").
    With n = 1 it is the reference algorithm's per-iteration `E_G.update(beta * E_AT + (1 - beta) * E_ST)`.
    The same object does it for the in-process backend and, replicated on every learner, for the
    collective path of the Ray backend, so both give the same bits."""

    def __init__(self, config: RunConfig, initial_state: StateDict, device: torch.device | str | None = None, *,
                 steps_per_epoch: int | None = None):
        if steps_per_epoch is None and config.schedule.clock_epochs is not None:
            raise ValueError("a step clock (schedule.clock_epochs) needs the run's steps_per_epoch")
        self.config = config
        self.max_decay = ema_max_decay(config, steps_per_epoch or 1)
        self.layout = StateLayout(initial_state)
        self.buffer = self.layout.pack(initial_state, device)
        self.state = self.layout.views(self.buffer)
        self.ema_steps = 0  # updates folded in so far (the warm-up counter s)
        self._scratch: tuple[torch.Tensor, torch.Tensor] | None = None  # the fold's two chunks, made once

    # Elements per chunk of the fold on a CPU: 64k floats (256 KiB) keep the chunk's partial sums in cache.
    CPU_CHUNK = 1 << 16

    @torch.no_grad()
    def fold(self, emas: Sequence[torch.Tensor | None], weights: Sequence[float], n_steps: int) -> None:
        """Fold n_steps of EMA of sum_k weights[k] * emas[k] in; emas[k] may be None where weights[k] == 0.

        Chunk by chunk, into two preallocated scratch chunks: each learner's EMA is read once and the global
        state read and written once (K + 2 passes over memory, no allocation), with the very operations of
        `weighted_sum` and `ema_update_` in the same order, element by element, so the bits are theirs
        (tests/unit/test_mixing.py)."""
        check_weights(weights, len(emas))
        terms = [(w, self.layout.floats(b)) for w, b in zip(weights, emas) if w != 0]
        if not terms:
            raise ValueError(f"mixing weights are all zero: {list(weights)}")
        decay = ema_decay_product(self.ema_steps, n_steps, self.max_decay)
        shadow = self.layout.floats(self.buffer)
        total = shadow.numel()
        chunk = total if shadow.device.type == "cuda" else min(total, self.CPU_CHUNK)
        if self._scratch is None or self._scratch[0].numel() < chunk:
            self._scratch = (torch.empty(chunk, dtype=shadow.dtype, device=shadow.device),
                             torch.empty(chunk, dtype=shadow.dtype, device=shadow.device))
        mixed_buf, term_buf = self._scratch
        single = len(terms) == 1 and terms[0][0] == 1.0  # weighted_sum returns the tensor itself: 1 * x is x
        for start in range(0, total, chunk):
            end = min(start + chunk, total)
            mixed, term = mixed_buf[: end - start], term_buf[: end - start]
            (w0, t0), *rest = terms
            if single:
                mixed = t0[start:end]
            else:
                torch.mul(t0[start:end], w0, out=mixed)
                for w, t in rest:
                    torch.mul(t[start:end], w, out=term)
                    mixed.add_(term)
            out = shadow[start:end]
            out.mul_(decay)
            torch.mul(mixed, 1 - decay, out=term)
            out.add_(term)
        self.layout.integer_bytes(self.buffer).copy_(self.layout.integer_bytes(emas[heaviest(weights)]))
        self.ema_steps += n_steps

    def sync(self, emas: Sequence[torch.Tensor | None], epoch: int, n_steps: int) -> bool:
        """Fold n_steps of EMA into the global state; return whether learners must load it now. `epoch` is the
        round's clock epoch (a round never spans two)."""
        self.fold(emas, mixing_weights(epoch, self.config), n_steps)
        return is_communication_epoch(epoch, self.config)

    def state_dict(self) -> dict:
        return {"state": self.state, "ema_steps": self.ema_steps}

    @torch.no_grad()
    def load_state_dict(self, saved: dict) -> None:
        for name, tensor in self.state.items():  # in place: whoever holds views of the state keeps them
            tensor.copy_(saved["state"][name])
        self.ema_steps = int(saved["ema_steps"])
