"""Standard AutoAttack (the `pyautoattack` package) on one block of points, attack by attack.

Why not one `run_standard_evaluation` call with its `state_path`: pyautoattack's evaluation state (read
in its `state.py`) keeps only the robust flags and the names of finished attacks. After a restore it
returns the adversarial points of the current run only (points broken before the crash come back as the
clean x), and an attack interrupted half-way is rerun over a different set of points. So a resumed run can
neither be recomputed from its points nor reproduce an uninterrupted one. We therefore run the cascade
ourselves, one `run_standard_evaluation` call per attack on the still-robust points of a block, exactly as
pyautoattack's own `run_standard_evaluation_individual` drives single attacks, and keep our own per-block
state (generalist.evaluation). On a block of at most `batch_size` points this is the same computation as one
`AutoAttack(...).run_standard_evaluation(x, y, batch_size=batch_size)` call: the same points, batches and
seeds reach every attack (tests/unit/test_evaluate.py compares the two bit for bit).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from generalist.errors import ConfigError

__all__ = ["AA_ATTACKS", "STANDARD_ATTACKS", "AutoAttackRunner", "BlockResult", "frozen_parameters"]

# Names as pyautoattack spells them.
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
# Attributes a user may tune on pyautoattack's attack objects (custom versions, fast tests).
_TUNABLE = {
    "apgd": ("n_iter", "n_restarts"),
    "apgd_targeted": ("n_iter", "n_restarts", "n_target_classes"),
    "fab": ("n_iter", "n_restarts", "n_target_classes"),
    "square": ("n_queries", "n_restarts"),
}


@dataclass
class BlockResult:
    """What AutoAttack did to one block of B points.

    x_adv: (B, C, H, W): the adversarial point where an attack reported success, else the clean x.
    broken_by: the attack that reported success first per point ("" where none did).
    seconds: wall time per attack."""

    x_adv: torch.Tensor
    broken_by: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class _Collect(logging.Handler):
    """Keeps pyautoattack's own warnings (randomised defence, probabilities, Square success) for eval.json."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def frozen_parameters(model: nn.Module):
    """Parameters with requires_grad=False for the duration: attacks need input gradients only, and FAB's
    backward() would otherwise write .grad into the caller's model. Restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class AutoAttackRunner:
    """pyautoattack's AutoAttack for one threat (norm, eps), run one block at a time.

    version "standard" runs APGD-CE, APGD-T, FAB-T, Square with pyautoattack's standard settings for the
    norm (L1: APGD with 5 restarts and the large-eps schedule, 5 target classes); "custom" runs `attacks`
    with pyautoattack's defaults. `options` sets attack attributes after construction, keys
    "apgd.n_iter", "apgd_targeted.n_iter", "fab.n_iter", "square.n_queries", ... (for quick checks; the
    result is then not standard AutoAttack and eval.json says so).
    The seed is pyautoattack's: every attack reseeds torch's global RNG with it on every call, which is why
    `run` saves and restores the global RNG around the attack.
    """

    name = "autoattack"

    def __init__(self, *, norm: str, eps: float, seed: int, version: str = "standard",
                 attacks: list[str] | None = None, options: dict[str, float] | None = None,
                 device: torch.device | str = "cpu") -> None:
        if version not in ("standard", "custom"):
            raise ConfigError(f"AutoAttack version {version!r} is not supported; use 'standard' or 'custom'")
        if version == "custom":
            if not attacks:
                raise ConfigError("AutoAttack version 'custom' needs attacks, e.g. apgd-ce,square")
            unknown = [a for a in attacks if a not in AA_ATTACKS]
            if unknown:
                raise ConfigError(f"unknown AutoAttack attack {unknown[0]!r}; choose from {', '.join(AA_ATTACKS)}")
        elif attacks is not None:
            raise ConfigError("attacks are fixed by version 'standard'; use version 'custom' to choose them")
        for key in options or {}:
            owner, _, attr = key.partition(".")
            if attr not in _TUNABLE.get(owner, ()):
                valid = ", ".join(f"{o}.{a}" for o, attrs in _TUNABLE.items() for a in attrs)
                raise ConfigError(f"unknown AutoAttack option {key!r}; valid: {valid}")
        self.norm, self.eps, self.seed, self.version = norm, float(eps), int(seed), version
        self.attacks = list(STANDARD_ATTACKS if version == "standard" else attacks)
        self.options = dict(options or {})
        self.device = torch.device(device)

    def describe(self) -> dict:
        return {"package": "pyautoattack", "version": self.version, "attacks": list(self.attacks),
                "seed": self.seed, "options": dict(self.options)}

    def _build(self, model: nn.Module):
        try:
            from pyautoattack import AutoAttack  # optional extra: generalist[eval]
        except ModuleNotFoundError:
            raise ConfigError("AutoAttack needs the pyautoattack package: pip install 'generalist[eval]' "
                              "(or evaluate with --autoattack none)") from None

        kwargs = {"attacks": self.attacks} if self.version == "custom" else {}
        aa = AutoAttack(model, norm=self.norm, eps=self.eps, seed=self.seed, version=self.version,
                        device=self.device, **kwargs)
        aa.verbose = False
        for key, value in self.options.items():
            owner, _, attr = key.partition(".")
            setattr(getattr(aa, owner), attr, int(value))
            if attr == "n_iter":  # APGD keeps a copy for its schedule
                obj = getattr(aa, owner)
                if hasattr(obj, "n_iter_orig"):
                    obj.n_iter_orig = int(value)
                    obj.n_iter_2 = max(int(0.22 * obj.n_iter), 1)
                    obj.n_iter_min = max(int(0.06 * obj.n_iter), 1)
                    obj.size_decr = max(int(0.03 * obj.n_iter), 1)
        return aa

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_correct: torch.Tensor) -> BlockResult:
        """x: (B, C, H, W) in [0, 1] on the runner's device, y: (B,), clean_correct: (B,) bool from the
        caller's own clean pass (the points AutoAttack starts from, as in its own first pass).

        The model must already be in eval mode; it is not changed (parameters' requires_grad and .grad,
        global RNG restored)."""
        aa = self._build(model)
        collect = _Collect()
        logger = logging.getLogger("auto-attack")
        logger.addHandler(collect)
        x_adv = x.clone()
        broken_by = [""] * len(y)
        robust = clean_correct.clone().to(torch.bool)
        seconds: dict[str, float] = {}
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), frozen_parameters(model):
                for attack in self.attacks:
                    index = robust.nonzero().flatten()
                    if index.numel() == 0:
                        break
                    started = time.perf_counter()
                    aa.attacks_to_run = [attack]
                    xa, ya = aa.run_standard_evaluation(x[index], y[index], batch_size=int(index.numel()))
                    seconds[attack] = time.perf_counter() - started
                    fooled = (ya != y[index]).to(robust.device)
                    hit = index[fooled]
                    x_adv[hit] = xa[fooled].to(x_adv.dtype)
                    robust[hit] = False
                    for i in hit.tolist():
                        broken_by[i] = attack
        finally:
            logger.removeHandler(collect)
        return BlockResult(x_adv.detach(), broken_by, seconds, list(dict.fromkeys(collect.messages)))
