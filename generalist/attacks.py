"""Projected gradient descent (ascent on the loss) over any threat model, without touching global state."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from generalist.losses import cross_entropy
from generalist.threat import Threat

__all__ = ["msd", "pgd"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _input_gradient(
    model: nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> torch.Tensor:
    delta = delta.detach().requires_grad_(True)
    # enable_grad: callers often attack from inside a torch.no_grad() evaluation loop.
    with torch.enable_grad():
        loss = loss_fn(model(x + delta), y)
        # Gradient w.r.t. delta only, so no .grad is ever written into the model's parameters.
        (grad,) = torch.autograd.grad(loss.sum(), delta)
    return grad


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: Threat,
    *,
    steps: int,
    step_size: float,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    restarts: int = 1,
) -> torch.Tensor:
    """PGD: `delta <- threat.project(delta + step_size * threat.step(grad), x)` for `steps` steps.

    x: (B, C, H, W) in [0, 1]; y: (B,) int64 labels. loss_fn(logits (B, K), y) -> (B,) per-example
    loss to maximise (default: cross-entropy). step_size is in the threat's norm, e.g. 2/255 for Linf.
    random_start draws the start from `generator` (required then). With restarts > 1, each example
    keeps the restart whose final point is misclassified, and among those (or if none) the highest loss.

    Returns x_adv: (B, C, H, W), detached, in [0, 1] and within threat.eps of x.
    Under torch.autocast (runtime.precision=bf16) only the model's passes run in bf16: delta, its gradient (which
    arrives in delta's dtype), the step and the projection stay in x's dtype, so the ball and the box hold exactly.
    The model's train/eval mode, the global RNG and parameter .grad are left as they were; in train
    mode the forward passes do update BatchNorm running statistics, so attack in eval mode if that matters.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be > 0 (e.g. 2/255 for Linf eps 8/255), got {step_size!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an int >= 1, got {restarts!r}")
    if random_start and not isinstance(generator, torch.Generator):
        raise ValueError(
            "random_start=True needs generator=torch.Generator(...).manual_seed(seed); "
            "the attack never draws from the global RNG"
        )
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 needs random_start=True; without it every restart is the same attack")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y must have shape (B,) = {tuple(x.shape[:1])} to match x, got {tuple(y.shape)}")
    loss_fn = cross_entropy if loss_fn is None else loss_fn
    x = x.detach()

    best_delta: torch.Tensor | None = None
    best_wrong = best_loss = None
    for _ in range(restarts):
        delta = threat.random_init(x, generator) if random_start else torch.zeros_like(x)
        for _ in range(steps):
            grad = _input_gradient(model, x, delta, y, loss_fn)
            delta = threat.project(delta + step_size * threat.step(grad), x)
        if restarts == 1:
            best_delta = delta
            break
        # Score the final point of this restart; the extra forward pass is only paid for restarts > 1.
        with torch.no_grad():
            logits = model(x + delta)
            loss = loss_fn(logits, y).detach()
            wrong = logits.argmax(dim=1) != y
        if best_delta is None:
            best_delta, best_wrong, best_loss = delta, wrong, loss
            continue
        # Lexicographic: misclassified beats correct; within the same class, higher loss wins.
        better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
        best_delta = torch.where(better.view(-1, *([1] * (x.dim() - 1))), delta, best_delta)
        best_wrong = torch.where(better, wrong, best_wrong)
        best_loss = torch.where(better, loss, best_loss)

    assert best_delta is not None
    # The clamp only removes ulp-level excursions left by computing x + ((x + delta).clamp(0, 1) - x).
    return (x + best_delta).clamp(0.0, 1.0).detach()


def msd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: Sequence[Threat],
    *,
    steps: int,
    step_sizes: Sequence[float],
    random_start: bool = False,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    """Multi steepest descent (Maini, Wong & Kolter 2020): one PGD over the union of several balls.

    At every step, from the current delta and its one input gradient, each threat proposes its own
    steepest-ascent step projected onto its own ball (and [0, 1]); each example keeps the proposal with
    the highest loss, ties going to the earlier threat. The point returned per example is the best of
    all steps, as in the authors' `msd_v0` (locuslab/robust_union, CIFAR10/cifar_funcs.py), which also
    starts at delta = 0 (random_start=False); random_start=True starts from threats[0].random_init.

    x: (B, C, H, W) in [0, 1]; y: (B,) labels; step_sizes[i] is in threats[i]'s norm.
    Costs per step one forward+backward and len(threats) forwards without gradient.
    Returns x_adv: (B, C, H, W), detached, in [0, 1] and inside at least one of the threats' balls.
    Like pgd(), it leaves the model's mode, the global RNG and parameter .grad alone.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if len(threats) < 1 or len(step_sizes) != len(threats):
        raise ValueError(f"msd needs one step size per threat, got {len(step_sizes)} for {len(threats)} threats")
    for size in step_sizes:
        if not (isinstance(size, (int, float)) and math.isfinite(size) and size > 0):
            raise ValueError(f"every step size must be > 0, got {list(step_sizes)!r}")
    if random_start and not isinstance(generator, torch.Generator):
        raise ValueError("random_start=True needs generator=torch.Generator(...).manual_seed(seed)")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y must have shape (B,) = {tuple(x.shape[:1])} to match x, got {tuple(y.shape)}")
    loss_fn = cross_entropy if loss_fn is None else loss_fn
    x = x.detach()
    rows = torch.arange(x.shape[0], device=x.device)

    delta = threats[0].random_init(x, generator) if random_start else torch.zeros_like(x)
    best_delta, best_loss = delta, None
    for _ in range(steps):
        grad = _input_gradient(model, x, delta, y, loss_fn)
        proposals = torch.stack([t.project(delta + size * t.step(grad), x) for t, size in zip(threats, step_sizes)])
        with torch.no_grad():
            losses = torch.stack([loss_fn(model(x + p), y) for p in proposals])  # (T, B)
        choice = losses.argmax(dim=0)  # argmax returns the first maximum on ties
        loss = losses[choice, rows]
        delta = proposals[choice, rows]
        better = loss > best_loss if best_loss is not None else torch.ones_like(loss, dtype=torch.bool)
        best_delta = torch.where(better.view(-1, *([1] * (x.dim() - 1))), delta, best_delta)
        best_loss = loss if best_loss is None else torch.where(better, loss, best_loss)
    return (x + best_delta).clamp(0.0, 1.0).detach()
