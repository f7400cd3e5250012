"""The attacks as the evaluation runs them: one attack under one threat on one block of points, seeded by
the block's first index so a block's numbers depend on nothing else."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from generalist.attacks import pgd
from generalist.data import derive_seed
from generalist.evaluation.spec import EvalSpec
from generalist.evaluation.threat_spec import format_eps
from generalist.threat import Threat


class BlockAttack(Protocol):
    """One attack under one threat, run on one block: returns x_adv (B, C, H, W) and what it reports."""

    key: str  # column prefix: "pgd", "aa"

    def run_block(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_correct: torch.Tensor,
                  start: int) -> tuple[torch.Tensor, dict]: ...

    def describe(self) -> dict: ...


class PGDAttack:
    """PGD-`steps` with `restarts` random starts; the start of block `start` draws from a CPU generator
    seeded by (seed, "pgd", norm, start), so it is the same on any device and in any process."""

    key = "pgd"

    def __init__(self, threat: Threat, *, steps: int, restarts: int, step_size: float, seed: int) -> None:
        self.threat, self.steps, self.restarts, self.step_size, self.seed = threat, steps, restarts, step_size, seed

    def describe(self) -> dict:
        return {"steps": self.steps, "restarts": self.restarts, "step_size": format_eps(self.step_size),
                "random_start": True, "eps": format_eps(self.threat.eps)}

    def run_block(self, model, x, y, clean_correct, start):
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "pgd", self.threat.name, start))
        x_adv = pgd(model, x, y, self.threat, steps=self.steps, step_size=self.step_size, random_start=True,
                    generator=generator, restarts=self.restarts)
        return x_adv, {}


class AutoAttackBlock:
    """pyautoattack's cascade on a block (generalist.autoattack_eval); reports which attack broke a point."""

    key = "aa"

    def __init__(self, runner) -> None:
        self.runner = runner

    def describe(self) -> dict:
        return self.runner.describe()

    def run_block(self, model, x, y, clean_correct, start):
        result = self.runner.run(model, x, y, clean_correct)
        return result.x_adv, {"broken_by": result.broken_by, "attack_seconds": result.seconds,
                              "warnings": result.warnings}


def build_attacks(spec: EvalSpec, device: torch.device) -> dict[str, list[BlockAttack]]:
    """norm -> the attacks of `spec` for that threat, PGD first (the cheap one), then AutoAttack."""
    attacks: dict[str, list[BlockAttack]] = {}
    for t in spec.threats:
        threat = t.threat()
        row: list[BlockAttack] = []
        if spec.pgd_steps > 0:
            row.append(PGDAttack(threat, steps=spec.pgd_steps, restarts=spec.pgd_restarts,
                                 step_size=spec.pgd_step_fraction * t.eps, seed=spec.seed))
        if spec.autoattack != "none":
            row.append(AutoAttackBlock(spec.autoattack_runner(t, device)))
        attacks[t.norm] = row
    return attacks
