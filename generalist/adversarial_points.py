"""The points a learner trains on: PGD of its configured attack against its model, in eval mode."""

from __future__ import annotations

import torch
import torch.nn as nn

from generalist.attacks import pgd
from generalist.config import AttackConfig
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
