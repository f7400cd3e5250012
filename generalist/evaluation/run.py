"""Running an EvalSpec's attacks on the test points block by block: evaluate_points and its results.

The points are cut into blocks of `batch_size` consecutive test points; every attack runs on one block at a
time with seeds derived from the block's first index, so a block's numbers depend on nothing else. That is
what makes a run resumable block by block (`state_dir`) and shardable over Ray workers
(generalist.distributed.sharded_eval) with the same numbers as one process. Every returned point is
checked (generalist.evaluation.checks) and the model's prediction on it is recomputed here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from generalist.data import TensorData, eval_batches
from generalist.errors import ConfigError
from generalist.evaluation.block_attacks import BlockAttack, build_attacks
from generalist.evaluation.block_store import BlockStore, fingerprint
from generalist.evaluation.checks import check_adversarial, sanity_warnings
from generalist.evaluation.point_table import merge_tables, point_table
from generalist.evaluation.spec import EvalSpec


class EvaluationStopped(Exception):
    """Raised after `max_blocks` blocks: a deliberate stop, as if the process had been killed there."""


def block_starts(n: int, batch_size: int) -> list[int]:
    return list(range(0, n, batch_size))


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
