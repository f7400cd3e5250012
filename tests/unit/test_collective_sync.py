"""The collective mixing path (generalist/distributed/collective_sync.py) in plain processes over gloo, no Ray.

Every replica of the global learner must hold the very bytes the in-process GlobalLearner computes from the
same EMA buffers: before mix_start (a broadcast from the anchor), in the mixing phase (an all-gather), at
communication epochs (the result handed back at once) and with rounds of several steps, with one learner per
process or several (the learners that share a GPU share a worker: one all-gather of each worker's slots, or no
collective at all when one process holds them all); and a peer that never arrives must end in an error that
names it instead of a silent wait."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from generalist.config import apply_overrides
from generalist.distributed import collective_sync
from generalist.distributed.collective_sync import CollectiveSync
from generalist.distributed.mixing_group import new_mixing_group
from generalist.errors import BackendError
from generalist.mixing import GlobalLearner, is_communication_epoch, mixing_weights
from generalist.models import build_model
from generalist.packed_state import StateLayout
from generalist.recipes import get_recipe

# (epoch, n_steps) rounds: before mix_start (epochs 1-5 of 9), mixing, and communication epochs (7, 8).
ROUNDS = [(1, 1), (2, 3), (6, 1), (7, 2), (7, 1), (8, 1), (9, 4)]


def _config(recipe: str):
    # The data-epoch clock: the rounds below name data epochs (the step clock's ticks are tested in test_clock).
    return apply_overrides(get_recipe(recipe), ["schedule.epochs=9", "schedule.clock_epochs=null",
                                                "mixing.redistribute_start=0.7",
                                                "mixing.redistribute_every=1", "model.name=small-cnn"])


def _initial_state():
    torch.manual_seed(0)
    return build_model("small-cnn", num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3).state_dict()


def _ema_of(rank: int, round_index: int, layout: StateLayout, init) -> torch.Tensor:
    """A distinct, reproducible EMA buffer per (learner, round), with distinct integer counters."""
    generator = torch.Generator().manual_seed(1000 * rank + round_index)
    state = {k: (v + torch.randn(v.shape, generator=generator) if v.is_floating_point() else v + 10 * rank + round_index)
             for k, v in init.items()}
    return layout.pack(state)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replica(rank: int, world: int, port: int, recipe: str, out: str, mode: str, beats, groups) -> None:
    """One worker process, holding the learners groups[rank]. mode: "normal"; "shared-memory" (the gather through
    /dev/shm of workers on one node's CPUs); "hang" (rank 1 stops before round
    3); "main-collective" (the main thread runs a collective on the default group while each background round is
    in flight, under TORCH_DISTRIBUTED_DEBUG=DETAIL); "slow" (rank 1 trains round 3 for 2.5x the sync timeout,
    beating)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if mode == "main-collective":
        os.environ["TORCH_DISTRIBUTED_DEBUG"] = "DETAIL"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    config = _config(recipe)
    init = _initial_state()
    global_learner = GlobalLearner(config, init)
    timeout_s = {"hang": 3.0, "slow": 2.0}.get(mode, 120.0)
    calls = {"broadcast": 0, "all_gather": 0}  # the collectives the mixing issues
    broadcast, all_gather = dist.broadcast, dist.all_gather_into_tensor

    def counted(name, collective):
        def call(*args, **kwargs):
            calls[name] += 1
            return collective(*args, **kwargs)
        return call

    collective_sync.dist.broadcast = counted("broadcast", broadcast)
    collective_sync.dist.all_gather_into_tensor = counted("all_gather", all_gather)
    sync = CollectiveSync(config, rank, global_learner, groups=groups,
                          group=new_mixing_group("gloo", torch.device("cpu"), timeout_s),
                          timeout_s=timeout_s, poll_s=0.25, missing=lambda step: [1],
                          progress=lambda: beats.value, shared_memory=mode == "shared-memory")
    assert (sync.shared is not None) == (mode == "shared-memory" and world > 1), "shared memory as asked"
    results, started = [], time.monotonic()
    try:
        for i, (epoch, n) in enumerate(ROUNDS):
            if rank == 1 and i == 3 and mode == "hang":
                sync.wait()
                torch.save({"hung": True}, out.format(rank=rank))
                time.sleep(15)  # alive but never reaches the sync: the others must fail with a clear error
                return
            if rank == 1 and i == 3 and mode == "slow":
                for _ in range(10):  # 5 s of training between two syncs, with a heartbeat every 0.5 s
                    time.sleep(0.5)
                    beats.value += 1
            emas = {k: _ema_of(k, i, global_learner.layout, init) for k in groups[rank]}
            started = time.monotonic()
            loaded = sync.exchange(epoch, n, emas)
            if mode == "main-collective":  # e.g. a barrier or DDP's broadcast, while the round is in flight
                total = torch.ones(3)
                dist.all_reduce(total)
                assert total.tolist() == [world] * 3
            results.append(None if loaded is None else global_learner.buffer.clone())
        sync.settle()  # every replica current, as train_learners does before a checkpoint
        payload = sync.global_payload()
        if sync.shared is not None:  # its gathers stand for the all-gathers
            calls["all_gather"] = sync.shared.rounds
        torch.save({"buffer": global_learner.buffer.clone(), "loaded": results,
                    "ema_steps": payload["ema_steps"], **calls}, out.format(rank=rank))
    except BackendError as error:
        torch.save({"error": str(error), "seconds": time.monotonic() - started}, out.format(rank=rank))
    finally:
        if mode != "hang":
            dist.destroy_process_group()
        else:
            os._exit(0)  # a peer is gone: skip the collective teardown


def _run(groups: list[list[int]], recipe: str, tmp_path: Path, mode: str = "normal") -> list[dict]:
    out = str(tmp_path / "replica-{rank}.pt")
    beats = mp.get_context("spawn").Value("i", 0)
    world = len(groups)
    mp.spawn(_replica, args=(world, _free_port(), recipe, out, mode, beats, groups), nprocs=world, join=True)
    return [torch.load(out.format(rank=r), weights_only=True) for r in range(world)]


@pytest.mark.parametrize("groups,recipe,mode", [([[0], [1]], "generalist-d", "normal"),
                                                ([[0], [1], [2]], "generalist-t", "normal"),
                                                ([[0, 1], [2]], "generalist-t", "normal"),
                                                ([[0, 1, 2]], "generalist-t", "normal"),
                                                ([[0], [1], [2]], "generalist-t", "shared-memory"),
                                                ([[0, 1], [2]], "generalist-t", "shared-memory"),
                                                ([[0], [1]], "generalist-d", "main-collective"),
                                                ([[0], [1]], "generalist-d", "slow")],
                         ids=["d", "t", "t-two-learners-share-a-worker", "t-one-worker-holds-all",
                              "t-shared-memory", "t-two-learners-share-a-worker-shared-memory",
                              "main-thread-collective-during-a-round", "slow-learner-with-heartbeat"])
def test_every_replica_holds_the_in_process_global_learner_bit_for_bit(tmp_path, groups, recipe, mode):
    """Also when the main thread uses the default group meanwhile (the mixing has a group of its own), and
    when a learner is slower than the sync timeout between two syncs but beats (slow is not hung)."""
    replicas = _run(groups, recipe, tmp_path, mode)
    config = _config(recipe)
    num_learners = len(config.learners)
    assert sorted(k for g in groups for k in g) == list(range(num_learners))
    init = _initial_state()
    expected = GlobalLearner(config, init)
    loaded = []
    for i, (epoch, n) in enumerate(ROUNDS):
        expected.sync([_ema_of(k, i, expected.layout, init) for k in range(num_learners)], epoch, n)
        loaded.append(expected.buffer.clone() if is_communication_epoch(epoch, config) else None)
    assert any(len([w for w in mixing_weights(e, config) if w]) == 1 for e, _ in ROUNDS)  # a broadcast round
    assert any(len([w for w in mixing_weights(e, config) if w]) == num_learners for e, _ in ROUNDS)  # all carry
    # Only what carries weight moves: nothing while the anchor alone does (epochs 1-6 here), one broadcast of
    # its global state when a second learner first carries weight, then one all-gather per round; nothing at
    # all when one worker holds every learner (a device-local fold).
    mixed_rounds = sum(len([w for w in mixing_weights(e, config) if w]) > 1 for e, _ in ROUNDS)
    moved = (1, mixed_rounds) if len(groups) > 1 else (0, 0)
    for rank, replica in enumerate(replicas):
        assert (replica["broadcast"], replica["all_gather"]) == moved, replica
        assert torch.equal(replica["buffer"], expected.buffer), f"replica {rank} differs"
        assert replica["ema_steps"] == sum(n for _, n in ROUNDS)
        for got, want in zip(replica["loaded"], loaded):
            assert (got is None) == (want is None)  # handed back exactly at the communication epochs
            assert got is None or torch.equal(got, want)


def test_a_peer_that_never_arrives_ends_in_an_error_naming_it_within_the_sync_timeout(tmp_path):
    replicas = _run([[0], [1]], "generalist-d", tmp_path, "hang")
    assert replicas[1] == {"hung": True}
    assert "learner(s) [1] never arrived" in replicas[0]["error"]
    # The deadline counts from when the round was queued (3 s), not from when someone waits for it; the
    # group's own timeout (mixing_group.group_timeout, 63 s) is far behind.
    assert 3.0 <= replicas[0]["seconds"] < 3.0 + 5.0, replicas[0]["seconds"]
