"""Baseline training objectives run in the same framework: TRADES and the multi-norm AVG, MAX, MSD and E-AT.

Each is the loss of one batch for one learner (K = 1 recipes, so every backend runs it unchanged). The shared
conventions of this framework hold for all of them: attacks see the model in eval mode and the training
forward passes run in train mode (so BatchNorm statistics come from training passes only), attacks draw
randomness only from the learner's generator, and the returned logits are (B, K) for the learner's training
accuracy. Where a method's reference code does something else, the function says what and why.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from generalist.adversarial_points import attack_points
from generalist.attacks import msd
from generalist.config import AttackConfig, LearnerConfig
from generalist.errors import ConfigError
from generalist.losses import cross_entropy, trades_kl
from generalist.threat import Threat, get_threat

__all__ = ["baseline_loss", "trades_loss", "avg_loss", "max_loss", "msd_loss", "eat_loss", "trades_attack"]

TRADES_INIT_STD = 0.001  # std of the Gaussian start of the TRADES attack (Zhang et al.'s trades.py)

Loss = tuple[torch.Tensor, torch.Tensor]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Attack in eval mode, then give the caller back the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _rows(points: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """points: (T, B, ...), choice: (B,) in [0, T) -> (B, ...), row b taken from points[choice[b], b]."""
    return points[choice, torch.arange(points.shape[1], device=points.device)]


def baseline_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, learner: LearnerConfig,
                  generator: torch.Generator, step: int) -> Loss:
    """Mean training loss of one batch under `learner.objective` and the logits it trained on.

    x: (B, C, H, W) in [0, 1]; y: (B,). The model is in train mode on entry and on exit. `step` (the learner's
    optimiser steps so far) is part of the interface; no objective here needs it, since E-AT's choice is drawn
    from `generator` (whose state is checkpointed, so a resumed run draws the same threats)."""
    objective = learner.objective
    threats = learner.threats
    if objective == "trades":
        assert learner.attack is not None  # LearnerConfig guarantees it
        return trades_loss(model, x, y, learner.attack, beta=learner.trades_beta, generator=generator)
    if objective == "avg":
        return avg_loss(model, x, y, threats, generator)
    if objective == "max":
        return max_loss(model, x, y, threats, generator)
    if objective == "msd":
        return msd_loss(model, x, y, threats, generator)
    if objective == "e-at":
        return eat_loss(model, x, y, threats, generator)
    raise ConfigError(f"learners.{learner.name}.objective={objective!r} has no baseline loss "
                      "(choose trades, avg, max, msd or e-at; 'ce' is handled by generalist.objectives)")


# --- TRADES ---------------------------------------------------------------------------------------


def trades_attack(model: nn.Module, x: torch.Tensor, logits_clean: torch.Tensor, threat: Threat, *, steps: int,
                  step_size: float, generator: torch.Generator) -> torch.Tensor:
    """The TRADES inner maximisation: steepest ascent on KL(f(x) || f(x')) over the ball of `threat`.

    As in the authors' trades.py: start at x + 0.001 * N(0, 1) (at x itself the KL gradient is 0), the clean
    output is a fixed target, each step is threat.step (sign for Linf) of size step_size, then projection onto
    the ball and [0, 1]. We also project the start onto the box (the reference evaluates the first gradient
    at a point up to ~0.003 outside [0, 1]). The caller decides the model's mode (TRADES uses eval mode).

    x: (B, C, H, W) in [0, 1]; logits_clean: (B, K). Returns x_adv (B, C, H, W), detached."""
    x = x.detach()
    target = logits_clean.detach()
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)
    delta = threat.project(TRADES_INIT_STD * noise, x)
    for _ in range(steps):
        delta = delta.detach().requires_grad_(True)
        with torch.enable_grad():
            kl = trades_kl(model(x + delta), target).sum()
            (grad,) = torch.autograd.grad(kl, delta)
        delta = threat.project(delta.detach() + step_size * threat.step(grad), x)
    return (x + delta).clamp(0.0, 1.0).detach()


def trades_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig, *, beta: float,
                generator: torch.Generator) -> Loss:
    """TRADES (Zhang et al. 2019): mean CE(f(x), y) + beta * mean KL(f(x) || f(x_adv)).

    Followed from the authors' released trades.py: the attack runs with the model in eval mode against the
    eval-mode clean output; the loss runs in train mode, with gradients through both the clean and the
    adversarial output (the clean distribution is not detached in the loss). The reference makes two clean
    forwards (one for CE, one for the KL target); we use one clean train-mode forward for both (same value;
    BatchNorm running statistics see one clean and one adversarial batch per step instead of two clean).
    Returns the mean loss and the adversarial logits (training accuracy is robust accuracy)."""
    threat = get_threat(attack.norm, attack.eps)
    with _eval_mode(model):
        with torch.no_grad():
            target = model(x)
        x_adv = trades_attack(model, x, target, threat, steps=attack.steps, step_size=attack.step_size,
                              generator=generator)
    logits_clean = model(x)
    logits_adv = model(x_adv)
    loss = cross_entropy(logits_clean, y).mean() + beta * trades_kl(logits_adv, logits_clean).mean()
    return loss, logits_adv


# --- multi-norm objectives --------------------------------------------------------------------------


def avg_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threats: list[AttackConfig],
             generator: torch.Generator) -> Loss:
    """AVG (Tramer & Boneh 2019): the mean over threats of the CE at each threat's PGD points.

    As their code's default mode (ftramer/MultiRobustness train.py): the T point sets are concatenated into
    one batch of T * B for one training forward and one optimiser step (BatchNorm sees the augmented batch).
    Maini et al.'s "triple augmentation" instead takes T optimiser steps per batch; we do not.
    Returns the mean loss and, per example, the logits of its highest-loss threat (so the training accuracy
    counts a point only when its worst threat's point is classified correctly)."""
    points = torch.stack([attack_points(model, x, y, attack, generator) for attack in threats])  # (T, B, ...)
    logits = model(points.flatten(0, 1))
    ce = cross_entropy(logits, y.repeat(len(threats))).view(len(threats), -1)  # (T, B)
    worst = ce.detach().argmax(dim=0)
    return ce.mean(), _rows(logits.view(len(threats), len(y), -1), worst)


def max_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threats: list[AttackConfig],
             generator: torch.Generator) -> Loss:
    """MAX (Tramer & Boneh 2019; "worst-case augmentation" in Maini et al. 2020): per example, train on the
    PGD point of whichever threat gives it the highest loss.

    As Tramer & Boneh's code: the losses that choose are computed with the model in eval mode (the attacker's
    view), then one training forward runs on the chosen points. Ties go to the earlier threat."""
    points = torch.stack([attack_points(model, x, y, attack, generator) for attack in threats])  # (T, B, ...)
    with _eval_mode(model), torch.no_grad():
        losses = torch.stack([cross_entropy(model(p), y) for p in points])  # (T, B)
    x_worst = _rows(points, losses.argmax(dim=0))
    logits = model(x_worst)
    return cross_entropy(logits, y).mean(), logits


def msd_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threats: list[AttackConfig],
             generator: torch.Generator) -> Loss:
    """MSD (Maini, Wong & Kolter 2020): CE at the points of attacks.msd over the union of the threats.

    The MSD loop runs threats[0].steps steps and starts as threats[0].random_start says (the authors start at
    delta = 0, so the msd recipe sets random_start false); every threat contributes its eps and step size."""
    first = threats[0]
    with _eval_mode(model):
        x_adv = msd(model, x, y, [get_threat(a.norm, a.eps) for a in threats], steps=first.steps,
                    step_sizes=[a.step_size for a in threats], random_start=first.random_start, generator=generator)
    logits = model(x_adv)
    return cross_entropy(logits, y).mean(), logits


def eat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threats: list[AttackConfig],
             generator: torch.Generator) -> Loss:
    """E-AT (Croce & Hein 2022): each batch trains on the PGD points of one threat drawn at random.

    The draw is uniform and comes from the learner's generator, so runs are reproducible on every backend and
    resume draws the same sequence. The authors' train.py weights the draw by 1 - (running robust training
    accuracy of each norm), starting uniform; that needs state across steps that a learner does not carry,
    so we keep the uniform start. They attack with APGD; we use the same PGD as every other recipe."""
    choice = int(torch.randint(len(threats), (1,), generator=generator, device=generator.device).item())
    x_adv = attack_points(model, x, y, threats[choice], generator)
    logits = model(x_adv)
    return cross_entropy(logits, y).mean(), logits
