"""What a run records: the rows of its metric tables and the state of its checkpoints.

Shared by the training loop that produces them (generalist.training, generalist.learner) and the storage
that keeps them (generalist.run_folder, the Ray backend's sink), so that storage can be read, written and
tested without the loop: this module imports neither.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from generalist.config import RunConfig
from generalist.mixing import is_communication_epoch

GLOBAL = "global"  # the global learner's name in metric rows, checkpoints and evaluations


@dataclass
class RoundStats:
    """What a learner reports after a round of n steps (one host sync per round, not per step)."""

    learner: str
    epoch: int
    steps_done: int  # optimiser steps since the start of training
    loss: float  # mean training loss over the round
    train_acc: float  # accuracy on the training inputs of its objective (adversarial for AT)
    lr: float
    seconds: float
    images: int
    tick: int  # the round's clock epoch (generalist.mixing.clock_tick): the schedules it trained under


@dataclass
class EpochResult:
    epoch: int
    global_step: int
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # model name -> metrics


def round_rows(config: RunConfig, epoch: int, global_step: int, stats: list[RoundStats], weights: list[float],
               redistributed: bool, sync_seconds: float) -> list[dict]:
    """Metric rows of one round, one per learner (the `rounds` table)."""
    names = config.learner_names
    return [{**asdict(s), "global_step": global_step, "weight": weights[names.index(s.learner)],
             "redistributed": redistributed, "sync_seconds": sync_seconds,
             "communication_epoch": is_communication_epoch(s.tick, config)} for s in stats]


def epoch_rows(result: EpochResult) -> list[dict]:
    """Metric rows of one epoch evaluation, one per model (the `epochs` table)."""
    return [{"epoch": result.epoch, "global_step": result.global_step, "model": name, **metrics}
            for name, metrics in result.accuracy.items()]


def accuracy_fields(row: dict, norms: Sequence[str] = ()) -> dict[str, float]:
    """The accuracy columns of an `epochs` row: clean_acc, then pgd_acc_<norm> in the order of `norms` (the run's
    threats, the order its validation prints them), then any other. Rows read back from the metrics store after a
    resume keep their columns in the store's order, not the run's."""
    fields = {k: v for k, v in row.items() if k == "clean_acc" or k.startswith("pgd_acc")}
    first = [k for k in ("clean_acc", *(f"pgd_acc_{norm}" for norm in norms)) if k in fields]
    return {k: fields[k] for k in [*first, *(k for k in fields if k not in first)]}


def checkpoint_state(config: RunConfig, global_step: int, end_of_epoch: bool, best_score) -> dict:
    """The state.json of a checkpoint, the same whichever backend writes it."""
    return {"global_step": global_step, "position": global_step, "epoch_end": end_of_epoch,
            "fingerprint": config.fingerprint(), "best_score": best_score, "learners": config.learner_names}
