"""Accuracy of a model: clean, PGD and AutoAttack per threat, worst case per point and union; checks first.

Two entry points:

- `clean_and_pgd_accuracy`: the quick per-epoch validation the training loop runs (PGD only).
- `evaluate_points` + `summarize`: the reported evaluation. The points are cut into blocks of
  `batch_size` consecutive test points; every attack runs on one block at a time with seeds derived from
  the block's first index, so a block's numbers depend on nothing else. That is what makes a run resumable
  block by block (`state_dir`) and shardable over Ray workers (generalist.distributed.sharded_eval) with the
  same numbers as one process. Nothing an attack says about itself is trusted: every returned point is
  checked to lie in the eps-ball and in [0, 1], and the model's prediction on it is recomputed here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from generalist.attacks import pgd
from generalist.config import AttackConfig, RunConfig
from generalist.data import TensorData, derive_seed, eval_batches
from generalist.errors import CheckpointError, ConfigError, GeneralistError
from generalist.threat import THREAT_NAMES, Threat, get_threat

DEFAULT_EVAL_ATTACK = AttackConfig(norm="Linf", eps=8 / 255, step_size=2 / 255, steps=10)
# The budgets results are reported at (PAPER.md, RobustBench).
DEFAULT_EPS_TEXT = {"Linf": "8/255", "L2": "0.5", "L1": "12"}
# Slack for float rounding when checking that a point lies in its eps-ball: pyautoattack's projections
# compute x + delta in float32, which can land a few ulps outside (relative 1e-6 seen for L2 and L1).
BALL_RTOL = 1e-5
BALL_ATOL = 1e-6
STATE_FORMAT = 2  # of the per-block records under state_dir; part of the resume key


class AttackCheckError(GeneralistError):
    """An attack returned a point outside its eps-ball or [0, 1], or NaN: its results cannot be used."""

    exit_code = 5


class EvaluationWarning(UserWarning):
    """A sign that an evaluation may be unreliable (gradient masking, randomness, probabilities)."""


class EvaluationStopped(Exception):
    """Raised after `max_blocks` blocks: a deliberate stop, as if the process had been killed there."""


# --- the per-epoch validation of the training loop ------------------------------------------------


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


# --- what to evaluate -----------------------------------------------------------------------------


def format_eps(eps: float) -> str:
    """A budget as reports write it: "8/255", "0.5", "12" (RobustBench's spelling)."""
    frac = Fraction(eps).limit_denominator(1000)
    if frac.denominator == 1:
        return str(frac.numerator)
    short = f"{eps:.6g}"
    if float(short) == eps and len(short) <= 6:
        return short
    if abs(float(frac) - eps) <= 1e-12 * max(1.0, abs(eps)):
        return f"{frac.numerator}/{frac.denominator}"
    return repr(eps)


def parse_eps(text: str, norm: str = "") -> float:
    """"8/255" -> 0.0313..., "0.5" -> 0.5; ConfigError unless a finite number > 0."""
    where = f" for {norm}" if norm else ""
    value: Any = None
    text = str(text).strip()
    match = re.fullmatch(r"([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)", text)
    try:
        if match:
            value = float(match.group(1)) / float(match.group(2))
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"eps{where} must be a number or a fraction like 8/255, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"eps{where} must be > 0, got {text!r}; write it as a fraction like 8/255")
    return value


@dataclass(frozen=True)
class ThreatSpec:
    """One threat model to evaluate: a norm as AutoAttack spells it and a budget eps > 0."""

    norm: str
    eps: float
    eps_text: str

    @classmethod
    def parse(cls, text: str) -> ThreatSpec:
        """"Linf" (default budget 8/255), "L2=1.0", "Linf=4/255"; names are case-insensitive."""
        name, _, eps_text = str(text).partition("=")
        eps_text = eps_text.strip()
        probe = get_threat(name.strip(), 1.0)  # ConfigError with close names for an unknown threat
        norm = probe.name
        if not eps_text:
            eps_text = DEFAULT_EPS_TEXT[norm]
        eps = parse_eps(eps_text, norm)
        return cls(norm, eps, eps_text if "/" in eps_text else format_eps(eps))

    def threat(self) -> Threat:
        return get_threat(self.norm, self.eps)


DEFAULT_THREATS = tuple(ThreatSpec.parse(name) for name in THREAT_NAMES)


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


# --- attacks as the evaluation sees them -----------------------------------------------------------


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


# --- checks ------------------------------------------------------------------------------------------


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


# --- running the attacks block by block -------------------------------------------------------------


def block_starts(n: int, batch_size: int) -> list[int]:
    return list(range(0, n, batch_size))


def tensor_digest(tensors: dict[str, torch.Tensor] | list[torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes: identifies a model or a set of points."""
    h = hashlib.sha256()
    items = tensors.items() if isinstance(tensors, dict) else enumerate(tensors)
    for name, t in items:
        t = t.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (BN counters) cannot be viewed as bytes
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class BlockStore:
    """Finished blocks on disk (`state_dir/blocks/START-NORM.json`), so a crashed evaluation resumes.

    `state_dir/spec.json` holds what the blocks were made from; a state made from another model, other
    points or another spec is refused rather than mixed in."""

    def __init__(self, state_dir: str | Path | None, fingerprint: dict) -> None:
        self.folder = Path(state_dir) if state_dir is not None else None
        if self.folder is None:
            return
        (self.folder / "blocks").mkdir(parents=True, exist_ok=True)
        spec_path = self.folder / "spec.json"
        if spec_path.exists():
            try:
                saved = json.loads(spec_path.read_text())
            except json.JSONDecodeError:
                saved = None
            if saved != json.loads(json.dumps(fingerprint)):
                raise CheckpointError(
                    f"{self.folder} holds an evaluation state of another model, points or settings; "
                    "pass --fresh to discard it, or choose another --out")
        else:
            from generalist.checkpoint import write_json_atomic

            write_json_atomic(spec_path, fingerprint)

    def _path(self, start: int, part: str) -> Path:
        assert self.folder is not None
        return self.folder / "blocks" / f"{start:08d}-{part}.json"

    def load(self, start: int, part: str) -> dict | None:
        if self.folder is None:
            return None
        path = self._path(start, part)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # not done, or cut by a crash: run it again

    def save(self, start: int, part: str, record: dict) -> None:
        if self.folder is not None:
            from generalist.checkpoint import write_json_atomic

            write_json_atomic(self._path(start, part), record)

    def done(self) -> int:
        return 0 if self.folder is None else len(list((self.folder / "blocks").glob("*.json")))


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def _run_block(model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: int, spec: EvalSpec,
               attacks: dict[str, list[BlockAttack]], store: BlockStore, log: Callable[[str], None]) -> dict:
    """All threats and attacks on one block; each part is loaded from `store` if already done."""
    record = store.load(start, "clean")
    if record is None:
        record = {"clean_pred": _predict(model, x).tolist()}
        if start == 0:
            record["sanity"] = sanity_warnings(model, x[:32], y[:32])
        store.save(start, "clean", record)
    clean_correct = torch.tensor(record["clean_pred"], device=y.device) == y
    out = {"clean": record}
    for t in spec.threats:
        part = store.load(start, t.norm)
        if part is None:
            part = {"attacks": []}  # a list: the order attacks ran in decides `fooled_by`
            threat = t.threat()
            for attack in attacks[t.norm]:
                started = time.perf_counter()
                x_adv, info = attack.run_block(model, x, y, clean_correct, start)
                norms = check_adversarial(x, x_adv, threat, f"{attack.key} ({type(attack).__name__})")
                pred = _predict(model, x_adv)  # recomputed here, never taken from the attack
                part["attacks"].append({"key": attack.key, "pred": pred.tolist(), "norm": norms.tolist(),
                                        "seconds": time.perf_counter() - started, **info})
            store.save(start, t.norm, part)
            log(f"block {start}-{start + len(y) - 1} {t.norm}: "
                + ", ".join(f"{a['key']} {100 * (torch.tensor(a['pred'], device=y.device) == y).float().mean():.1f}%"
                            f" ({a['seconds']:.1f} s)" for a in part["attacks"]))
        out[t.norm] = part
    return out


def evaluate_points(model: nn.Module, data: TensorData, spec: EvalSpec, *, device: torch.device | str = "cpu",
                    state_dir: str | Path | None = None, blocks: list[int] | None = None,
                    max_blocks: int | None = None, attacks: dict[str, list[BlockAttack]] | None = None,
                    log: Callable[[str], None] | None = None) -> PointResults:
    """Run every attack of `spec` on the first `spec.n` points of `data`; per-point outcomes as columns.

    data: the test split (uint8). Runs in eval mode whatever mode the model is in (restored afterwards),
    needs no gradient from the caller (works under torch.no_grad or inference_mode), leaves parameters,
    their .grad and the global RNG as they were. `blocks` restricts the run to those block starts (a shard);
    `state_dir` keeps finished blocks so a second call resumes; `attacks` replaces the attacks built from
    `spec` (norm -> list). Raises AttackCheckError when an attack returns an invalid point.
    """
    device = torch.device(device)
    n = len(data) if spec.n is None else spec.n
    if n > len(data):
        raise ConfigError(f"n={n} is larger than the {len(data)} points of the test split; use n <= {len(data)}")
    starts = block_starts(n, spec.batch_size) if blocks is None else list(blocks)
    attacks = build_attacks(spec, device) if attacks is None else attacks
    missing = [t.norm for t in spec.threats if t.norm not in attacks]
    if missing:
        raise ConfigError(f"no attacks given for threat {missing[0]}")
    log = log or (lambda message: None)
    points = TensorData(data.x[:n], data.y[:n])
    store = BlockStore(state_dir, fingerprint(model, points, spec))
    records: dict[int, dict] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False):
            for count, start in enumerate(starts):
                if max_blocks is not None and count >= max_blocks:
                    raise EvaluationStopped(f"stopped after {max_blocks} blocks")
                x, y = next(eval_batches(TensorData(points.x[start:start + spec.batch_size],
                                                    points.y[start:start + spec.batch_size]),
                                         spec.batch_size, device))
                records[start] = _run_block(model, x, y, start, spec, attacks, store, log)
    finally:
        model.train(was_training)
    return PointResults(point_table(points, spec, starts, records), *_notes_and_seconds(spec, records))


@dataclass
class PointResults:
    """Per-point outcome columns (see point_table), the checks' and pyautoattack's warnings, and the
    seconds each attack took per threat (blocks loaded from a resumed state count their first run)."""

    table: dict[str, list]
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)


def _notes_and_seconds(spec: EvalSpec, records: dict[int, dict]) -> tuple[list[str], dict[str, dict[str, float]]]:
    notes: list[str] = []
    seconds: dict[str, dict[str, float]] = {t.norm: {} for t in spec.threats}
    for start in sorted(records):
        notes.extend(records[start]["clean"].get("sanity", []))
        for t in spec.threats:
            for part in records[start][t.norm]["attacks"]:
                key = part["key"]
                seconds[t.norm][key] = seconds[t.norm].get(key, 0.0) + part["seconds"]
                for name, s in part.get("attack_seconds", {}).items():  # AutoAttack's attacks one by one
                    seconds[t.norm][f"{key}:{name}"] = seconds[t.norm].get(f"{key}:{name}", 0.0) + s
                notes.extend(f"{t.norm} pyautoattack: {w}" for w in part.get("warnings", []))
    return list(dict.fromkeys(notes)), seconds


def merge_results(results: list[PointResults]) -> PointResults:
    """Results of disjoint blocks (shards) -> one, in index order."""
    seconds: dict[str, dict[str, float]] = {}
    for r in results:
        for norm, per in r.seconds.items():
            for key, s in per.items():
                seconds.setdefault(norm, {})[key] = seconds.get(norm, {}).get(key, 0.0) + s
    notes = list(dict.fromkeys(n for r in results for n in r.notes))
    return PointResults(merge_tables([r.table for r in results]), notes, seconds)


def fingerprint(model: nn.Module, points: TensorData, spec: EvalSpec) -> dict:
    """What an evaluation's numbers are a function of (model weights, points, spec): the resume key."""
    return {"state_format": STATE_FORMAT, "model_sha256": tensor_digest(model.state_dict()),
            "points_sha256": tensor_digest([points.x, points.y]), "spec": spec.to_dict()}


# --- per-point table and summary --------------------------------------------------------------------


def point_table(points: TensorData, spec: EvalSpec, starts: list[int], records: dict[int, dict]) -> dict[str, list]:
    """Columns (one entry per point, in index order) from block records.

    index, label, clean_pred, clean_correct; per threat T and attack A (pgd, aa): T_A_pred (the model's
    prediction at the attack's point), T_A_correct (clean_correct and T_A_pred == label), T_A_norm (the
    perturbation's norm); T_aa_broken_by (the AutoAttack attack that reported success, "" if none);
    T_robust (no attack under T fools the point: the per-point worst case); T_fooled_by ("clean", the
    first attack whose point is misclassified, or ""); union_robust (robust under every threat)."""
    cols: dict[str, list] = {"index": [], "label": [], "clean_pred": [], "clean_correct": []}
    for start in sorted(starts):
        rec = records[start]
        labels = points.y[start:start + spec.batch_size].tolist()
        block_cols: dict[str, list] = {"index": list(range(start, start + len(labels))), "label": labels,
                                       "clean_pred": rec["clean"]["clean_pred"]}
        block_cols["clean_correct"] = [p == l for p, l in zip(block_cols["clean_pred"], labels)]
        union = list(block_cols["clean_correct"])
        for t in spec.threats:
            robust = list(block_cols["clean_correct"])
            fooled_by = ["" if c else "clean" for c in robust]
            for part in rec[t.norm]["attacks"]:
                key = part["key"]
                # Robust to this attack: right on the clean point and on the attack's point (AutoAttack's rule;
                # a perturbation that happens to fix a clean mistake does not count).
                correct = [c and p == l for c, p, l in zip(block_cols["clean_correct"], part["pred"], labels)]
                block_cols[f"{t.norm}_{key}_pred"] = part["pred"]
                block_cols[f"{t.norm}_{key}_correct"] = correct
                block_cols[f"{t.norm}_{key}_norm"] = part["norm"]
                if "broken_by" in part:
                    block_cols[f"{t.norm}_{key}_broken_by"] = part["broken_by"]
                for i, ok in enumerate(correct):
                    if not ok and robust[i]:
                        fooled_by[i] = (part.get("broken_by") or [""] * len(correct))[i] or key
                    robust[i] = robust[i] and ok
            block_cols[f"{t.norm}_robust"] = robust
            block_cols[f"{t.norm}_fooled_by"] = fooled_by
            union = [u and r for u, r in zip(union, robust)]
        block_cols["union_robust"] = union
        for name, values in block_cols.items():
            cols.setdefault(name, []).extend(values)
    return cols


def merge_tables(tables: list[dict[str, list]]) -> dict[str, list]:
    """Tables of disjoint blocks (shards) -> one table in index order."""
    tables = [t for t in tables if t["index"]]
    if not tables:
        return {}
    names = list(tables[0])
    rows = sorted((i, k, j) for k, t in enumerate(tables) for j, i in enumerate(t["index"]))
    if len({i for i, _, _ in rows}) != len(rows):
        raise ValueError("shards overlap: a point was evaluated twice")
    return {name: [tables[k][name][j] for _, k, j in rows] for name in names}


def _pct(count: int, n: int) -> str:
    return f"{100 * count / n:.2f}" if n else "nan"


def summarize(table: dict[str, list], spec: EvalSpec, *, notes: list[str] = (), warn: bool = True) -> dict:
    """Accuracies (percent strings, RobustBench style) and exact counts from the per-point table.

    Recounts everything from the table's recomputed predictions. Warns (EvaluationWarning) where PGD fools
    points AutoAttack did not (a sign of masking or a weak AutoAttack setting), where an attack reported a
    success the recomputed prediction does not confirm, and repeats the model's sanity warnings."""
    n = len(table["index"])
    clean = int(sum(table["clean_correct"]))
    out: dict[str, Any] = {"n_examples": n, "clean_acc": _pct(clean, n), "counts": {"clean": clean},
                           "threats": {}, "warnings": list(notes)}
    for t in spec.threats:
        entry: dict[str, Any] = {"threat_model": t.norm, "eps": t.eps_text, "eps_value": t.eps}
        counts: dict[str, Any] = {}
        for key, field_name in (("pgd", "pgd_acc"), ("aa", "autoattack_acc")):
            column = table.get(f"{t.norm}_{key}_correct")
            if column is not None:
                counts[field_name] = int(sum(column))
                entry[field_name] = _pct(counts[field_name], n)
        counts["robust"] = int(sum(table[f"{t.norm}_robust"]))
        entry["robust_acc"] = _pct(counts["robust"], n)
        if f"{t.norm}_aa_broken_by" in table:
            broken = table[f"{t.norm}_aa_broken_by"]
            counts["broken_by"] = {a: broken.count(a) for a in dict.fromkeys(b for b in broken if b)}
            aa_ok = table[f"{t.norm}_aa_correct"]
            unconfirmed = sum(1 for b, ok in zip(broken, aa_ok) if b and ok)
            if unconfirmed:
                out["warnings"].append(f"{t.norm}: AutoAttack reported {unconfirmed} points fooled that the "
                                       "recomputed prediction calls correct (counted as robust)")
            if f"{t.norm}_pgd_correct" in table:
                beats = sum(1 for p, a in zip(table[f"{t.norm}_pgd_correct"], aa_ok) if a and not p)
                counts["pgd_beats_autoattack"] = beats
                if beats:
                    out["warnings"].append(
                        f"{t.norm}: PGD fools {beats} of {n} points that AutoAttack does not; AutoAttack should "
                        "be the stronger attack, so this suggests gradient masking or a weakened AutoAttack")
        fooled = table[f"{t.norm}_fooled_by"]
        counts["fooled_by"] = {k: fooled.count(k) for k in dict.fromkeys(f for f in fooled if f)}
        entry["counts"] = counts
        out["threats"][t.norm] = entry
    union = int(sum(table["union_robust"]))
    out["counts"]["union"] = union
    out["union_acc"] = _pct(union, n)
    if warn:
        for message in out["warnings"]:
            warnings.warn(message, EvaluationWarning, stacklevel=2)
    return out


def write_points_parquet(table: dict[str, list], path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """The per-point table as Parquet (one row per point), with constant columns from `extra`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(table.get("index", []))
    data = {name: values for name, values in table.items()}
    for name, value in (extra or {}).items():
        data[name] = [value] * n
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.table(data), tmp)
    tmp.replace(path)


def read_points_parquet(path: str | Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


# --- loading the model to evaluate -------------------------------------------------------------------


@dataclass
class ModelSource:
    """A model ready to evaluate and where it came from."""

    model: nn.Module
    name: str  # "global" or a learner's name
    architecture: str
    dataset: str
    checkpoint: str  # the file the weights came from
    run_dir: str | None
    config: RunConfig | None
    model_kwargs: dict


def build_eval_model(architecture: str, dataset: str) -> tuple[nn.Module, dict]:
    from generalist.data import dataset_info
    from generalist.models import build_model

    info = dataset_info(dataset)
    kwargs = {"num_classes": info.num_classes, "in_channels": info.shape[0], "mean": info.mean, "std": info.std}
    return build_model(architecture, **kwargs), kwargs


def load_weights(model: nn.Module, state: dict, where: str, architecture: str) -> None:
    """load_state_dict(strict) with a one-line CheckpointError naming what does not fit."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where} does not hold a model state_dict (a mapping of names to tensors)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("shape differs", shapes)) if keys)
        raise CheckpointError(f"{where} is not a {architecture} checkpoint for this dataset ({detail}); "
                              "pass the --arch and --dataset it was trained with")
    model.load_state_dict(state)


def load_model(source: str | Path, *, learner: str = "global", checkpoint: str = "auto", weights: str = "model",
               architecture: str | None = None, dataset: str | None = None) -> ModelSource:
    """The model to evaluate from a run folder, a checkpoint folder or a bare `.pt` state_dict.

    Run folder: the global learner from final/global.pt (checkpoint "auto" or "final"), else
    checkpoints/last (or "best", "last"); a base learner (learner=NAME) from checkpoints/last, its trained
    weights (weights "model") or its EMA ("ema"). A bare .pt needs architecture and dataset unless it sits in
    RUN/final/ or RUN/checkpoints/*/. architecture / dataset given with a run override nothing: they are
    checked against the run's config."""
    from generalist import checkpoint as ckpt
    from generalist.config import load_run_config

    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run folder, a checkpoint folder or a .pt file")
    # RUN, RUN/final, RUN/final/global.pt, RUN/checkpoints/last, RUN/checkpoints/last/global.pt
    run_dir = next((c for c in (path, *list(path.parents)[:3]) if (c / "config.json").is_file()), None)
    config = load_run_config(run_dir) if run_dir is not None else None
    if config is not None:
        for label, given, own in (("--arch", architecture, config.model.name),
                                  ("--dataset", dataset, config.data.dataset)):
            if given is not None and given != own:
                raise CheckpointError(f"{label} {given} contradicts the run's config ({own}) in {run_dir}")
        architecture, dataset = config.model.name, config.data.dataset
    if architecture is None or dataset is None:
        raise ConfigError(f"{path} is not inside a run folder: pass --arch and --dataset")
    if config is not None and learner != "global" and learner not in config.learner_names:
        raise ConfigError(f"run {run_dir} has no learner {learner!r}; its learners: "
                          f"{', '.join(config.learner_names)} (or global)")
    if weights not in ("model", "ema"):
        raise ConfigError(f"weights must be model or ema, got {weights!r}")
    model, kwargs = build_eval_model(architecture, dataset)

    if path.is_file():
        state = ckpt.load_state_dict_file(path)
        if isinstance(state, dict) and "state" in state and isinstance(state["state"], dict):
            state = state["state"]  # a checkpoint payload rather than a bare state_dict
        elif isinstance(state, dict) and weights in state and isinstance(state[weights], dict):
            state = state[weights]
        file = path
    else:
        folder, file, state = path, None, None
        if (path / "config.json").is_file():  # a run folder
            if learner == "global" and checkpoint in ("auto", "final") and (path / "final" / "global.pt").is_file():
                file = path / "final" / "global.pt"
                state = ckpt.load_state_dict_file(file)
            else:
                which = "last" if checkpoint in ("auto", "final") else checkpoint
                if which not in ("last", "best"):
                    raise ConfigError(f"checkpoint must be auto, final, last or best, got {checkpoint!r}")
                if checkpoint == "final" and learner == "global":
                    raise CheckpointError(f"{path} has no final/global.pt: the run did not finish; "
                                          "use --checkpoint last")
                folder = path / "checkpoints" / which
        if state is None:
            found = ckpt.find_checkpoint(folder)
            if found is None:
                raise CheckpointError(f"{folder} holds no complete checkpoint")
            name = "global" if learner == "global" else f"learner-{learner}"
            payload = ckpt.load_payload(found, name)
            file = found / f"{name}.pt"
            state = payload["state"] if learner == "global" else payload[weights]
    load_weights(model, state, str(file), architecture)
    model.eval()
    return ModelSource(model, learner, architecture, dataset, str(file), str(run_dir) if run_dir else None,
                       config, kwargs)


# --- eval.json ----------------------------------------------------------------------------------------


def eval_record(summary: dict, spec: EvalSpec, source: ModelSource, attacks: dict[str, list[BlockAttack]], *,
                seconds: float, metadata: dict, device: str, threads: int, shards: int, split_size: int) -> dict:
    """eval.json: a RobustBench model entry for the first threat, every threat's numbers, and provenance.

    Accuracies are percent strings with two decimals, as RobustBench writes them; `counts` holds the exact
    integers they come from."""
    first = spec.threats[0].norm
    head = summary["threats"][first]
    run_name = Path(source.run_dir).name if source.run_dir else Path(source.checkpoint).stem
    config = source.config
    threats = {}
    for t in spec.threats:
        entry = dict(summary["threats"][t.norm])
        entry["attacks"] = {a.key: a.describe() for a in attacks[t.norm]}
        threats[t.norm] = entry
    return {
        "name": f"{run_name}/{source.name}",
        "dataset": source.dataset,
        "architecture": source.architecture,
        "threat_model": first,
        "eps": head["eps"],
        "clean_acc": summary["clean_acc"],
        "autoattack_acc": head.get("autoattack_acc"),
        "additional_data": False,
        "number_forward_passes": 1,
        "n_examples": summary["n_examples"],
        "points": f"the first {summary['n_examples']} of the {split_size} {source.dataset} test points",
        "standard_autoattack": spec.is_standard(),
        "union_acc": summary["union_acc"],
        "union_threats": [t.norm for t in spec.threats],
        "threats": threats,
        "counts": summary["counts"],
        "warnings": summary["warnings"],
        "seeds": [spec.seed],
        "model": {"learner": source.name, "checkpoint": source.checkpoint, "run_dir": source.run_dir,
                  "recipe": config.recipe if config else None, "train_seed": config.seed if config else None,
                  "weights_sha256": tensor_digest(source.model.state_dict())},
        "eval": {**spec.to_dict(), "device": device, "threads": threads, "shards": shards,
                 "seconds": round(seconds, 2), "block_size": spec.batch_size},
        "metadata": metadata,
    }


def format_summary(record: dict) -> str:
    """A Markdown table of one eval.json: clean, per-threat PGD / AutoAttack / worst case, union."""
    lines = [f"{record['name']} ({record['architecture']}, {record['dataset']}, {record['n_examples']} points)",
             "| threat | eps | clean | PGD | AutoAttack | worst case |", "|---|---|---|---|---|---|"]
    for norm, entry in record["threats"].items():
        lines.append(f"| {norm} | {entry['eps']} | {record['clean_acc']} | {entry.get('pgd_acc', '-')} | "
                     f"{entry.get('autoattack_acc', '-')} | {entry['robust_acc']} |")
    lines.append(f"| union | | {record['clean_acc']} | | | {record['union_acc']} |")
    return "\n".join(lines)
