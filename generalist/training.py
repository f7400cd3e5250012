"""The training loop of a group of base learners, the same for every backend.

A backend decides only where learners live and how their EMAs reach the global learner:
the in-process backend holds all K learners here and mixes directly; a Ray learner actor holds one and
exchanges with the coordinator actor. Both run `train_learners` below over the same round plan, so the
numbers cannot depend on the backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from generalist.bn_stats import calibration_batches, reestimate_global_bn_
from generalist.config import RunConfig
from generalist.data import (TensorData, TrainStream, dataset_info, derive_seed, load_split, resolve_data_root,
                             split_train_val)
from generalist.evaluation.validation import clean_and_pgd_accuracy, run_threats
from generalist.learner import Learner, build_initial_state, run_round
from generalist.mixing import StateDict, clock_tick, mixing_weights, tick_starts
from generalist.models import build_model
from generalist.records import GLOBAL, EpochResult, RoundStats


@dataclass
class RunData:
    """Everything a process needs to build learners: data, the batch stream and the shared init."""

    train: TensorData
    val: TensorData
    stream: TrainStream
    model_kwargs: dict
    initial_state: StateDict


def validation_split_seed(seed: int) -> int:
    """The seed of a run's held-out validation split (seed stream 3), for split_train_val / split_indices."""
    return derive_seed(seed, 3)


def prepare_run_data(config: RunConfig) -> RunData:
    """Load the data and build the shared initialisation; a pure function of the config and the files."""
    info = dataset_info(config.data.dataset)
    root = resolve_data_root(config.data.root)
    full = load_split(config.data.dataset, root, train=True, download=config.data.download)
    train, val = split_train_val(full, config.data.val_size, seed=validation_split_seed(config.seed))
    if config.data.train_subset is not None:
        train = TensorData(train.x[: config.data.train_subset], train.y[: config.data.train_subset])
    stream = TrainStream(train, batch_size=config.data.batch_size, seed=derive_seed(config.seed, 4),
                         augment=config.data.use_augmentation)
    model_kwargs = {"num_classes": info.num_classes, "in_channels": info.shape[0], "mean": info.mean, "std": info.std}
    return RunData(train, val, stream, model_kwargs, build_initial_state(config, **model_kwargs))


def plan_epoch(steps_per_epoch: int, sync_every: int, cuts: list[int] | tuple[int, ...] = ()) -> list[tuple[int, int]]:
    """Rounds of one epoch as (first_step, n_steps): a sync every `sync_every` steps and at epoch end.

    `cuts` are steps of the epoch where a clock epoch begins (a step clock's ticks fall inside data epochs): a
    round also ends there, so every round lies in one clock epoch and sees one lr, one gamma and one
    communication rule, whatever sync_every is."""
    rounds = []
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < steps_per_epoch), steps_per_epoch]
    for start, end in zip(bounds, bounds[1:]):
        first = start
        while first < end:
            n = min(sync_every, end - first)
            rounds.append((first, n))
            first += n
    return rounds


def epoch_cuts(config: RunConfig, epoch: int, steps_per_epoch: int, starts: list[int]) -> list[int]:
    """The steps of 1-based data `epoch` where a clock epoch begins (none for the data-epoch clock)."""
    if config.schedule.clock_epochs is None:
        return []
    low = (epoch - 1) * steps_per_epoch
    return [s - low for s in starts if low < s < low + steps_per_epoch]


class Sync(Protocol):
    """How a process's learners meet the global learner at the end of a round."""

    def exchange(self, epoch: int, n_steps: int, emas: dict[int, torch.Tensor]) -> StateDict | None:
        """Hand in these learners' packed EMA buffers (learner index -> Learner.ema_buffer); get the global
        state back when they must load it now. A sync may go on mixing after it returns (the global state is
        then needed by nobody until the next sync); a buffer handed in stays untouched until the end of the
        next round, which is all a sync may rely on."""

    def global_payload(self) -> dict:
        """The global learner's checkpoint payload (state + EMA counter), every round handed in folded in."""

    def settle(self) -> None:
        """Called by every process at the same points, before a checkpoint or an evaluation: afterwards the
        global state of the process that owns it is current (a replica may lag between such points)."""


class Sink(Protocol):
    """Where a process's rounds, evaluations and checkpoints go (run folder, Ray Train report, ...)."""

    def on_round(self, epoch: int, global_step: int, stats: list[RoundStats], weights: list[float],
                 redistributed: bool, sync_seconds: float) -> None: ...

    def on_epoch(self, result: EpochResult) -> None: ...

    def checkpoint(self, global_step: int, payloads: dict[str, dict], end_of_epoch: bool,
                   result: EpochResult | None) -> None: ...


class RunStopped(Exception):
    """Raised after `max_rounds` rounds: a deliberate stop, as if the process had been killed there."""


def evaluate_models(config: RunConfig, data: RunData, learners: list[Learner], global_state: StateDict | None,
                    epoch: int, device: torch.device) -> dict[str, dict[str, float]]:
    """Clean and PGD accuracy on the validation points of each learner here and of the global learner.

    Each model gets its own generator, seeded by (seed, epoch, model), so a model's numbers do not depend
    on which process evaluates it or on what was evaluated before it."""
    n = config.eval.n_examples
    val = TensorData(data.val.x[:n], data.val.y[:n])
    if n == 0:
        return {}
    attacks = run_threats(config)
    results = {}
    models = [(learner.index, learner.name, learner.model) for learner in learners]
    if global_state is not None:
        tick = clock_tick(config, epoch * data.stream.steps_per_epoch - 1, data.stream.steps_per_epoch)
        models.append((len(config.learners), GLOBAL, global_model(config, data, global_state, device, tick)))
    for index, name, model in models:
        generator = torch.Generator(device=device)
        generator.manual_seed(derive_seed(config.seed, 2, epoch, index))  # seed stream 2: evaluation
        results[name] = clean_and_pgd_accuracy(model, val, attacks, pgd_steps=config.eval.pgd_steps,
                                               batch_size=config.eval.batch_size, generator=generator, device=device)
    return results


def reestimate_global_bn(config: RunConfig, data: RunData, model: nn.Module, device: torch.device | str,
                         tick: int, weights: list[float] | None = None) -> nn.Module:
    """Recompute the global model's BatchNorm statistics in place from the run's first `mixing.bn_batches`
    training batches, each shared among the learners' training inputs by their weights at clock epoch `tick`
    (generalist.bn_stats.reestimate_global_bn_); the one rule training, final/global.pt and `generalist eval`
    share. `weights` (one per learner, in config order) replaces the schedule's, for a study of other mixes."""
    weights = mixing_weights(tick, config) if weights is None else weights
    shares = [(w, learner.attack) for w, learner in zip(weights, config.learners)]
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(config.seed, 5, tick))  # seed stream 5: BatchNorm calibration
    return reestimate_global_bn_(model, calibration_batches(data.stream, config.mixing.bn_batches, device), shares,
                                 generator)


def global_model(config: RunConfig, data: RunData, state: StateDict, device: torch.device | str,
                 tick: int) -> nn.Module:
    """The global learner at clock epoch `tick` as a model to evaluate or ship: `state` loaded, and under
    mixing.global_bn=reestimate its BatchNorm statistics re-estimated (reestimate_global_bn)."""
    model = build_model(config.model.name, **data.model_kwargs).to(device)
    model.load_state_dict(state)
    if config.mixing.global_bn == "reestimate":
        reestimate_global_bn(config, data, model, device, tick)
    return model


def shipped_global_state(config: RunConfig, data: RunData, state: StateDict) -> StateDict:
    """What final/global.pt holds: the global state, its BatchNorm statistics re-estimated where the config
    asks (on the CPU with the run's thread count, so both backends write the same bits)."""
    if config.mixing.global_bn != "reestimate":
        return state
    threads = torch.get_num_threads()
    torch.set_num_threads(config.runtime.threads)
    try:
        cpu_state = {name: t.detach().cpu() for name, t in state.items()}
        last_step = config.schedule.epochs * data.stream.steps_per_epoch - 1
        model = global_model(config, data, cpu_state, "cpu", clock_tick(config, last_step, data.stream.steps_per_epoch))
        return {name: t.detach().clone() for name, t in model.state_dict().items()}
    finally:
        torch.set_num_threads(threads)


def train_learners(config: RunConfig, data: RunData, learners: list[Learner], sync: Sync, sink: Sink, *,
                   start_step: int, owns_global: bool, global_state_for_eval, device: torch.device,
                   max_rounds: int | None = None) -> None:
    """Run every round from `start_step` (optimiser steps already done) to the end of training.

    `global_state_for_eval()` returns the current global state where `owns_global`, for evaluation."""
    spe = data.stream.steps_per_epoch
    epochs = config.schedule.epochs
    starts = tick_starts(config, spe)
    every = config.runtime.checkpoint_every_rounds
    global_step, rounds_run = start_step, 0
    for epoch in range(1, epochs + 1):
        if epoch * spe <= start_step:
            continue  # finished (and checkpointed) before this resume
        plan = plan_epoch(spe, config.mixing.sync_every, epoch_cuts(config, epoch, spe, starts))
        for round_in_epoch, (first, n) in enumerate(plan):
            if (epoch - 1) * spe + first < start_step:
                continue
            tick = clock_tick(config, (epoch - 1) * spe + first, spe)  # the round's clock epoch: its schedules
            weights = mixing_weights(tick, config)
            stats = run_round(learners, epoch, first, n)  # on their own CUDA streams under runtime.learner_streams
            t0 = time.perf_counter()
            to_load = sync.exchange(tick, n, {learner.index: learner.ema_buffer for learner in learners})
            if to_load is not None:
                for learner in learners:
                    learner.load_global_(to_load)
            global_step += n
            rounds_run += 1
            sink.on_round(epoch, global_step, stats, weights, to_load is not None, time.perf_counter() - t0)
            last_of_epoch = round_in_epoch == len(plan) - 1
            if every and (round_in_epoch + 1) % every == 0 and not last_of_epoch:
                sync.settle()
                sink.checkpoint(global_step, _payloads(learners, sync, owns_global), False, None)
            if max_rounds is not None and rounds_run >= max_rounds:
                raise RunStopped(f"stopped after {rounds_run} rounds at step {global_step}")
        result = EpochResult(epoch, global_step)
        sync.settle()  # the evaluation and the checkpoint below read the global state
        if epoch % config.eval.every_epochs == 0 or epoch == epochs:
            result.accuracy = evaluate_models(config, data, learners,
                                              global_state_for_eval() if owns_global else None, epoch, device)
        sink.on_epoch(result)
        sink.checkpoint(global_step, _payloads(learners, sync, owns_global), True, result)


def _payloads(learners: list[Learner], sync: Sync, owns_global: bool) -> dict[str, dict]:
    payloads = {f"learner-{learner.name}": learner.state_dict() for learner in learners}
    if owns_global:
        payloads[GLOBAL] = sync.global_payload()
    return payloads
