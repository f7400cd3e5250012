"""Nothing an attack says about itself is trusted: its points are checked, and the model is sanity-checked
first (AutoAttack's `checks.py`: eval mode, logits not probabilities, non-zero input gradients)."""

from __future__ import annotations

import torch
from torch import nn

from generalist.errors import GeneralistError
from generalist.evaluation.threat_spec import format_eps
from generalist.threat import Threat

# Slack for float rounding when checking that a point lies in its eps-ball: pyautoattack's projections
# compute x + delta in float32, which can land a few ulps outside (relative 1e-6 seen for L2 and L1).
BALL_RTOL = 1e-5
BALL_ATOL = 1e-6


class AttackCheckError(GeneralistError):
    """An attack returned a point outside its eps-ball or [0, 1], or NaN: its results cannot be used."""

    exit_code = 5


class EvaluationWarning(UserWarning):
    """A sign that an evaluation may be unreliable (gradient masking, randomness, probabilities)."""


def check_adversarial(x: torch.Tensor, x_adv: torch.Tensor, threat: Threat, attack: str) -> torch.Tensor:
    """Every point finite, in [0, 1] and inside the eps-ball of x (up to BALL_RTOL / BALL_ATOL rounding).

    x, x_adv: (B, C, H, W). Returns the (B,) perturbation norms; AttackCheckError naming the attack if not."""
    what = f"{attack} under {threat.name} eps {format_eps(threat.eps)}"
    if x_adv.shape != x.shape:
        raise AttackCheckError(f"{what} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    if not bool(torch.isfinite(x_adv).all()):
        raise AttackCheckError(f"{what} returned NaN or infinite pixels; its results are not used")
    low, high = float(x_adv.min()), float(x_adv.max())
    if low < 0.0 or high > 1.0:
        raise AttackCheckError(f"{what} returned pixels outside [0, 1] (min {low:.6g}, max {high:.6g}); "
                               "its results are not used")
    norms = threat.norm((x_adv - x).double())
    limit = threat.eps * (1 + BALL_RTOL) + BALL_ATOL
    outside = norms > limit
    if bool(outside.any()):
        raise AttackCheckError(
            f"{what} returned {int(outside.sum())} of {len(norms)} points outside the eps-ball "
            f"(largest {threat.name} norm {float(norms.max()):.6g} > {threat.eps:.6g}); its results are not used")
    return norms.float()


def sanity_warnings(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """AutoAttack-style checks on a few points, model already in eval mode: finite logits (else an error),
    logits not probabilities, the same output twice (no randomness), non-zero input gradients."""
    assert not model.training, "sanity checks run in eval mode"
    found = []
    with torch.no_grad():
        first, second = model(x), model(x)
    if not bool(torch.isfinite(first).all()):
        raise AttackCheckError("the model returns NaN or infinite logits on clean test points")
    if bool(((first >= 0) & (first <= 1)).all()) and bool(((first.sum(1) - 1).abs() < 1e-5).all()):
        found.append("the model's outputs look like probabilities; attacks need logits")
    if not torch.equal(first, second):
        found.append("the model gives different outputs for the same input in eval mode (a randomised "
                      "model); these numbers are not reproducible and need an EOT attack")
    delta = torch.zeros_like(x, requires_grad=True)
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(model(x + delta), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
    zero = int((grad.flatten(1).abs().sum(1) == 0).sum())
    if zero:
        found.append(f"{zero} of {len(y)} points have an exactly zero input gradient (gradient masking?)")
    return found
