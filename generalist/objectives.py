"""Training objectives of a base learner: the loss on one batch, given its model and threat(s)."""

from __future__ import annotations

import torch
import torch.nn as nn

from generalist.attacks import pgd
from generalist.config import AttackConfig, LearnerConfig
from generalist.losses import cross_entropy
from generalist.threat import get_threat


def attack_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """PGD points of `attack` against `model` in eval mode (the reference attacks the model in eval
    mode and trains it in train mode), restoring the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        return pgd(model, x, y, get_threat(attack.norm, attack.eps), steps=attack.steps,
                   step_size=attack.step_size, random_start=attack.random_start, generator=generator)
    finally:
        model.train(was_training)


def objective_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, learner: LearnerConfig,
                   generator: torch.Generator, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean training loss of one batch and the logits it was computed on (for training accuracy).

    x: (B, C, H, W) in [0, 1]; the model is in train mode on entry and on exit."""
    if learner.objective == "ce":
        inputs = x if learner.attack is None else attack_points(model, x, y, learner.attack, generator)
        logits = model(inputs)
        return cross_entropy(logits, y).mean(), logits
    from generalist.baselines import baseline_loss  # multi-norm and TRADES objectives

    return baseline_loss(model, x, y, learner, generator, step)
