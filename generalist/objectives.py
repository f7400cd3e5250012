"""Training objectives of a base learner: the loss on one batch, given its model and threat(s)."""

from __future__ import annotations

import torch
import torch.nn as nn

from generalist.adversarial_points import attack_points
from generalist.baselines import baseline_loss  # multi-norm and TRADES objectives
from generalist.config import LearnerConfig
from generalist.losses import cross_entropy


def objective_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, learner: LearnerConfig,
                   generator: torch.Generator, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean training loss of one batch and the logits it was computed on (for training accuracy).

    x: (B, C, H, W) in [0, 1]; the model is in train mode on entry and on exit."""
    if learner.objective == "ce":
        inputs = x if learner.attack is None else attack_points(model, x, y, learner.attack, generator)
        logits = model(inputs)
        return cross_entropy(logits, y).mean(), logits
    return baseline_loss(model, x, y, learner, generator, step)
