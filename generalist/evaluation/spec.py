"""How to evaluate (EvalSpec): threats, attacks, points, seed and block size; checked where it is made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from generalist.errors import ConfigError
from generalist.evaluation.threat_spec import DEFAULT_THREATS, ThreatSpec


@dataclass(kw_only=True)
class EvalSpec:
    """How to evaluate: which threats, which attacks, how many points, which seed and batch size.

    A block is `batch_size` consecutive points; all seeds are derived from `seed` and the block's first index,
    so the numbers depend on (seed, batch_size) and not on how blocks are spread over processes. AutoAttack
    runs its cascade per block: the same as `AutoAttack(...).run_standard_evaluation(x_block, y_block,
    batch_size=batch_size)` for each block. (One direct call on more points than batch_size re-batches the
    surviving points of all blocks before each attack, so its random starts, not its expected accuracy,
    differ.)"""

    threats: list[ThreatSpec] = field(default_factory=lambda: list(DEFAULT_THREATS))
    n: int | None = None  # the first n points of the test split; None: all of them
    batch_size: int = 250  # pyautoattack's default
    seed: int = 0
    pgd_steps: int = 20  # 0: no PGD
    pgd_restarts: int = 1
    pgd_step_fraction: float = 0.25  # PGD step size = fraction * eps (2/255 at 8/255; 0.125 at L2 0.5)
    autoattack: str = "standard"  # "standard" | "custom" | "none"
    aa_attacks: list[str] | None = None  # for "custom"
    aa_options: dict[str, float] = field(default_factory=dict)  # e.g. {"apgd.n_iter": 10}

    def __post_init__(self) -> None:
        if not self.threats:
            raise ConfigError("evaluate at least one threat, e.g. --threat Linf")
        norms = [t.norm for t in self.threats]
        if len(set(norms)) != len(norms):
            raise ConfigError(f"each norm may be evaluated once per run, got {norms}; use two evaluations "
                              "for two budgets of one norm")
        if self.n is not None and (isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1):
            raise ConfigError(f"n must be a positive number of points, got {self.n!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size!r}")
        if self.pgd_steps < 0 or self.pgd_restarts < 1:
            raise ConfigError(f"PGD needs steps >= 0 and restarts >= 1, got {self.pgd_steps}, {self.pgd_restarts}")
        if not 0 < self.pgd_step_fraction <= 1:
            raise ConfigError(f"pgd_step_fraction must be in (0, 1], got {self.pgd_step_fraction}")
        if self.autoattack not in ("standard", "custom", "none"):
            raise ConfigError(f"autoattack must be standard, custom or none, got {self.autoattack!r}")
        if self.pgd_steps == 0 and self.autoattack == "none":
            raise ConfigError("nothing to run: PGD is off (pgd_steps=0) and AutoAttack is none")
        if self.autoattack != "none":
            # Validates the attack names and options now, not after an hour of PGD.
            self.autoattack_runner(self.threats[0], torch.device("cpu"))

    def autoattack_runner(self, threat: ThreatSpec, device: torch.device):
        from generalist.autoattack_eval import AutoAttackRunner

        return AutoAttackRunner(norm=threat.norm, eps=threat.eps, seed=self.seed, version=self.autoattack,
                                attacks=self.aa_attacks if self.autoattack == "custom" else None,
                                options=self.aa_options, device=device)

    def is_standard(self) -> bool:
        return self.autoattack == "standard" and not self.aa_options

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EvalSpec:
        data = dict(data)
        data["threats"] = [ThreatSpec(**t) for t in data["threats"]]
        return cls(**data)
