"""Learners side by side (generalist.learner.run_round, runtime.learner_streams): a round queues every learner's steps
before it waits for any, and on a CPU, where there are no streams, the numbers are those of the learners one after
another, bit for bit. (On a GPU each learner queues on its own stream: tests/gpu/test_gpu_training.py.)"""

from __future__ import annotations

import pytest
import torch

from generalist.config import RuntimeConfig
from generalist.learner import Learner, run_round
from generalist.training import prepare_run_data


class RecordingLearner:
    """A learner that only says when its round was queued and when it was waited for."""

    def __init__(self, name: str, log: list[str]):
        self.name, self.log = name, log

    def launch_steps(self, epoch: int, first_step: int, n: int):
        self.log.append(f"launch {self.name} {epoch}:{first_step}+{n}")
        learner = self

        class Launched:
            def result(self):
                learner.log.append(f"wait {learner.name}")
                return learner.name

        return Launched()


def test_a_round_queues_every_learner_before_it_waits_for_any_and_reports_in_learner_order():
    log: list[str] = []
    stats = run_round([RecordingLearner(name, log) for name in ("linf", "natural", "l2")], 3, 10, 5)
    assert stats == ["linf", "natural", "l2"]
    assert log == ["launch linf 3:10+5", "launch natural 3:10+5", "launch l2 3:10+5",
                   "wait linf", "wait natural", "wait l2"]


@pytest.fixture(scope="module")
def generalist_t():
    from conftest import tiny_config

    config = tiny_config("generalist-t-small", "runtime.learner_streams=true")  # asked for: still none on a CPU
    return config, prepare_run_data(config)


def cpu_learners(config, data) -> list[Learner]:
    return [Learner(config, k, data.initial_state, data.stream, data.model_kwargs, torch.device("cpu"))
            for k in range(len(config.learners))]


def test_learner_streams_are_off_by_default_and_a_cpu_learner_never_has_one(generalist_t):
    assert RuntimeConfig().learner_streams is False  # until a GPU has run them (docs/performance.md)
    assert [learner.cuda_stream for learner in cpu_learners(*generalist_t)] == [None, None, None]


def test_on_a_cpu_a_round_side_by_side_gives_the_learners_numbers_one_after_another_bit_for_bit(generalist_t):
    alone, together = cpu_learners(*generalist_t), cpu_learners(*generalist_t)
    rounds = [(1, 0, 2), (1, 2, 1), (2, 0, 2)]  # the second epoch draws a new order from the shared stream
    one_after_another = [[learner.run_steps(*r) for learner in alone] for r in rounds]
    side_by_side = [run_round(together, *r) for r in rounds]

    def without_time(stats):
        return [[{**vars(s), "seconds": 0} for s in round_] for round_ in stats]

    assert without_time(side_by_side) == without_time(one_after_another)
    for a, b in zip(alone, together):
        assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
        assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_a_learners_round_seconds_are_its_own_not_the_other_learners_launched_in_between(generalist_t, monkeypatch):
    """The metrics' `seconds` (and the img/s of the progress line) stay each learner's own: on a CPU, where launching
    is training, a round side by side must not count the learners launched after it. A fake clock moves only while
    the second learner trains."""
    import generalist.learner as learner_module

    class Clock:
        now = 0.0

        def perf_counter(self):
            return self.now

    clock = Clock()
    monkeypatch.setattr(learner_module, "time", clock)
    learners = cpu_learners(*generalist_t)
    slow_step = learners[1].train_step

    def ten_seconds_a_step(x, y):
        clock.now += 10.0
        return slow_step(x, y)

    learners[1].train_step = ten_seconds_a_step
    stats = run_round(learners, 1, 0, 2)
    assert [s.seconds for s in stats] == [0.0, 20.0, 0.0]
