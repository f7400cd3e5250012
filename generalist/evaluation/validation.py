"""The quick per-epoch validation the training loop runs: clean and PGD accuracy on held-out points."""

from __future__ import annotations

import torch
from torch import nn

from generalist.attacks import pgd
from generalist.config import AttackConfig, RunConfig
from generalist.data import TensorData, eval_batches
from generalist.threat import get_threat

DEFAULT_EVAL_ATTACK = AttackConfig(norm="Linf", eps=8 / 255, step_size=2 / 255, steps=10)


def run_threats(config: RunConfig) -> list[AttackConfig]:
    """The threats a run is judged on: each distinct norm its learners train against (Linf if none)."""
    seen: dict[str, AttackConfig] = {}
    for learner in config.learners:
        for attack in learner.threats:
            seen.setdefault(attack.norm, attack)
    return list(seen.values()) or [DEFAULT_EVAL_ATTACK]


def clean_and_pgd_accuracy(model: nn.Module, data: TensorData, attacks: list[AttackConfig], *, pgd_steps: int,
                           batch_size: int, generator: torch.Generator, device: torch.device) -> dict[str, float]:
    """{"clean_acc": ..., "pgd_acc_<norm>": ...} in [0, 1] over all points of `data`, model in eval mode.

    Each attack is PGD-`pgd_steps` with the threat's eps and step size and one random start."""
    was_training = model.training
    model.eval()
    correct = {"clean_acc": 0, **{f"pgd_acc_{a.norm}": 0 for a in attacks}}
    total = 0
    try:
        for x, y in eval_batches(data, batch_size, device):
            with torch.no_grad():
                correct["clean_acc"] += (model(x).argmax(1) == y).sum().item()
            for attack in attacks:
                x_adv = pgd(model, x, y, get_threat(attack.norm, attack.eps), steps=pgd_steps,
                            step_size=attack.step_size, random_start=True, generator=generator)
                with torch.no_grad():
                    correct[f"pgd_acc_{attack.norm}"] += (model(x_adv).argmax(1) == y).sum().item()
            total += len(y)
    finally:
        model.train(was_training)
    return {k: v / max(total, 1) for k, v in correct.items()}
