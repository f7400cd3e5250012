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
                           batch_size: int, generator: torch.Generator, device: torch.device,
                           union: bool = False) -> dict[str, float]:
    """{"clean_acc": ..., "pgd_acc_<norm>": ...} in [0, 1] over all points of `data`, model in eval mode, and with
    `union` also "pgd_acc_union": the points classified right clean and under every attack (AutoAttack's union
    rule; the per-threat numbers and the generator's use are the same with or without it).

    Each attack is PGD-`pgd_steps` with the threat's eps and step size and one random start."""
    was_training = model.training
    model.eval()
    correct = {"clean_acc": 0, **{f"pgd_acc_{a.norm}": 0 for a in attacks}}
    union_correct = total = 0
    try:
        for x, y in eval_batches(data, batch_size, device):
            with torch.no_grad():
                right = model(x).argmax(1) == y
            correct["clean_acc"] += right.sum().item()
            for attack in attacks:
                x_adv = pgd(model, x, y, get_threat(attack.norm, attack.eps), steps=pgd_steps,
                            step_size=attack.step_size, random_start=True, generator=generator)
                with torch.no_grad():
                    robust = model(x_adv).argmax(1) == y
                correct[f"pgd_acc_{attack.norm}"] += robust.sum().item()
                right = right & robust
            if union:  # one more host sync per batch: only where the union is asked for, not in every validation
                union_correct += right.sum().item()
            total += len(y)
    finally:
        model.train(was_training)
    if union:
        correct["pgd_acc_union"] = union_correct
    return {k: v / max(total, 1) for k, v in correct.items()}
