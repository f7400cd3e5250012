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

from generalist.config import RunConfig
from generalist.data import (TensorData, TrainStream, dataset_info, derive_seed, load_split, resolve_data_root,
                             split_train_val)
from generalist.evaluation.validation import clean_and_pgd_accuracy, run_threats
from generalist.learner import Learner, build_initial_state
from generalist.mixing import StateDict, mixing_weights
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


def plan_epoch(steps_per_epoch: int, sync_every: int) -> list[tuple[int, int]]:
    """Rounds of one epoch as (first_step, n_steps): a sync every `sync_every` steps and at epoch end."""
    rounds, first = [], 0
    while first < steps_per_epoch:
        n = min(sync_every, steps_per_epoch - first)
        rounds.append((first, n))
        first += n
    return rounds


class Sync(Protocol):
    """How a process's learners meet the global learner at the end of a round."""

    def exchange(self, epoch: int, n_steps: int, emas: dict[int, torch.Tensor]) -> StateDict | None:
        """Hand in these learners' packed EMA buffers (learner index -> Learner.ema_buffer); get the global
        state back when they must load it now. A sync may go on mixing after it returns (the global state is
        then needed by nobody until the next sync); a buffer handed in stays untouched until the end of the
        next round, which is all a sync may rely on."""

    def global_payload(self) -> dict:
        """The global learner's checkpoint payload (state + EMA counter), every round handed in folded in."""


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
        scratch = build_model(config.model.name, **data.model_kwargs).to(device)
        scratch.load_state_dict(global_state)
        models.append((len(config.learners), GLOBAL, scratch))
    for index, name, model in models:
        generator = torch.Generator(device=device)
        generator.manual_seed(derive_seed(config.seed, 2, epoch, index))  # seed stream 2: evaluation
        results[name] = clean_and_pgd_accuracy(model, val, attacks, pgd_steps=config.eval.pgd_steps,
                                               batch_size=config.eval.batch_size, generator=generator, device=device)
    return results


def train_learners(config: RunConfig, data: RunData, learners: list[Learner], sync: Sync, sink: Sink, *,
                   start_step: int, owns_global: bool, global_state_for_eval, device: torch.device,
                   max_rounds: int | None = None) -> None:
    """Run every round from `start_step` (optimiser steps already done) to the end of training.

    `global_state_for_eval()` returns the current global state where `owns_global`, for evaluation."""
    spe = data.stream.steps_per_epoch
    epochs = config.schedule.epochs
    plan = plan_epoch(spe, config.mixing.sync_every)
    every = config.runtime.checkpoint_every_rounds
    global_step, rounds_run = start_step, 0
    for epoch in range(1, epochs + 1):
        if epoch * spe <= start_step:
            continue  # finished (and checkpointed) before this resume
        weights = mixing_weights(epoch, config)
        for round_in_epoch, (first, n) in enumerate(plan):
            if (epoch - 1) * spe + first < start_step:
                continue
            stats = [learner.run_steps(epoch, first, n) for learner in learners]
            t0 = time.perf_counter()
            to_load = sync.exchange(epoch, n, {learner.index: learner.ema_buffer for learner in learners})
            if to_load is not None:
                for learner in learners:
                    learner.load_global_(to_load)
            global_step += n
            rounds_run += 1
            sink.on_round(epoch, global_step, stats, weights, to_load is not None, time.perf_counter() - t0)
            last_of_epoch = round_in_epoch == len(plan) - 1
            if every and (round_in_epoch + 1) % every == 0 and not last_of_epoch:
                sink.checkpoint(global_step, _payloads(learners, sync, owns_global), False, None)
            if max_rounds is not None and rounds_run >= max_rounds:
                raise RunStopped(f"stopped after {rounds_run} rounds at step {global_step}")
        result = EpochResult(epoch, global_step)
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
