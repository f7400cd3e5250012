"""The mixing group: one backend for all learners, a group of its own, and timeouts behind our deadline.

NCCL cannot run on the machines this project is tested on (one GPU at most, and NCCL refuses two ranks on one
device), so its branch is checked with torch.distributed's `new_group` mocked: what we ask torch for."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from generalist.distributed import mixing_group
from generalist.distributed.mixing_group import (LearnerDevice, abort_group, choose_backend, group_timeout,
                                                 new_mixing_group, on_one_node_cpus)
from generalist.errors import ConfigError


def devices(*where: tuple[str, str]) -> list[LearnerDevice]:
    return [LearnerDevice(rank, node, device) for rank, (node, device) in enumerate(where)]


def test_learners_on_cpus_mix_over_gloo():
    assert choose_backend(devices(("a", "cpu"), ("b", "cpu"))) == "gloo"


def test_learners_with_a_gpu_each_mix_over_nccl_even_with_the_same_index_on_two_nodes():
    assert choose_backend(devices(("a", "cuda:0"), ("a", "cuda:1"), ("b", "cuda:0"))) == "nccl"


def test_learners_that_share_a_gpu_mix_over_gloo_since_nccl_refuses_two_ranks_on_one_device():
    assert choose_backend(devices(("a", "cuda:0"), ("a", "cuda:0"))) == "gloo"


def test_a_group_with_gpus_and_cpus_is_refused_naming_each_learners_device():
    with pytest.raises(ConfigError) as error:
        choose_backend(devices(("node-a", "cuda:0"), ("node-b", "cpu")))
    message = str(error.value)
    assert "learner 0: cuda:0 on node-a" in message and "learner 1: cpu on node-b" in message
    assert "\n" not in message


def test_only_learners_on_the_cpus_of_one_node_gather_through_shared_memory():
    assert on_one_node_cpus(devices(("a", "cpu"), ("a", "cpu"), ("a", "cpu")))
    assert not on_one_node_cpus(devices(("a", "cpu"), ("b", "cpu")))  # two nodes: /dev/shm is not shared
    assert not on_one_node_cpus(devices(("a", "cuda:0"), ("a", "cuda:0")))  # on a GPU the states stay there


def test_the_groups_own_timeout_is_always_past_ours():
    for ours in (1.0, 30.0, 600.0, 3600.0):
        assert group_timeout(ours) >= timedelta(seconds=ours + 60)


class NewGroupSpy:
    """Records what dist.new_group was asked for, and the NCCL variables at that moment."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        self.calls.append({**kwargs, "env": {k: os.environ.get(k) for k in
                                             ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_FR_BUFFER_SIZE")}})
        return object()


@pytest.fixture
def spy(monkeypatch) -> NewGroupSpy:
    recorder = NewGroupSpy()
    monkeypatch.setattr(mixing_group.dist, "new_group", recorder)
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # what Ray Train sets in its workers
    monkeypatch.delenv("TORCH_FR_BUFFER_SIZE", raising=False)
    return recorder


def test_an_nccl_group_gets_our_timeout_its_device_and_no_watchdog_kill(spy):
    new_mixing_group("nccl", torch.device("cuda", 1), sync_timeout_s=600)
    (call,) = spy.calls
    assert call["backend"] == "nccl"
    assert call["timeout"] == group_timeout(600)
    assert call["device_id"] == torch.device("cuda", 1)  # eager init: a bad device fails at start
    assert call["env"] == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0", "TORCH_FR_BUFFER_SIZE": "2000"}
    # Only while the group is made: the process's other groups keep what they had.
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and "TORCH_FR_BUFFER_SIZE" not in os.environ


def test_a_gloo_group_is_a_new_group_with_our_timeout_never_the_default_one(spy):
    new_mixing_group("gloo", torch.device("cpu"), sync_timeout_s=30)
    (call,) = spy.calls
    assert call["backend"] == "gloo" and call["timeout"] == group_timeout(30)


def test_nccl_for_a_learner_on_a_cpu_is_refused():
    with pytest.raises(Exception, match="does not fit"):
        new_mixing_group("nccl", torch.device("cpu"), sync_timeout_s=30)


def test_aborting_a_gloo_group_or_no_group_is_harmless(tmp_path):
    abort_group(None)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        group = new_mixing_group("gloo", torch.device("cpu"), sync_timeout_s=5)
        abort_group(group)
    finally:
        dist.destroy_process_group()
