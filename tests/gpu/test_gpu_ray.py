"""The Ray backend on real GPUs: one GPU per learner, learners sharing one GPU, and a learner killed on the GPU and
restarted; each run ends with the same global weights as the in-process backend on the GPU (deterministic
kernels, same device type). Marked `gpu`, skipped without CUDA or Ray. Mirrors tests/ray/test_ray_backend.py."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from conftest import coordinator_handle, tiny_config
from generalist.checkpoint import load_state_dict_file

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ray = pytest.importorskip("ray")

from generalist.distributed import train  # noqa: E402


@pytest.fixture(scope="module")
def gpu_ray():
    """A local Ray on 127.0.0.1 with the machine's real GPUs (tests/conftest's local_ray has logical ones)."""
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", logging_level="error")
    yield ray
    ray.shutdown()


def learners_seen(k: int, seen: dict) -> threading.Thread:
    def watch():
        coordinator = coordinator_handle(ray)
        deadline = time.monotonic() + 120  # a deadline, not a count of polls
        while time.monotonic() < deadline:
            learners = ray.get(coordinator.learners.remote())
            if len(learners) == k:
                seen.update(learners)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def assert_same_global(a, b) -> None:
    x, y = (load_state_dict_file(p / "final" / "global.pt") for p in (a, b))
    assert set(x) == set(y)
    differ = [k for k in x if not torch.equal(x[k], y[k])]
    assert not differ, f"differ: {differ[:5]}"


def gpu_config(recipe: str, *overrides: str):
    # Every test here compares bits between runs: it asks for deterministic kernels (off by default on GPUs).
    return tiny_config(recipe, "schedule.epochs=2", "runtime.device=cuda", "runtime.deterministic=true", *overrides)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (one per learner)")
def test_each_learner_trains_on_its_own_gpu(gpu_ray, tmp_path):
    k = 3 if torch.cuda.device_count() >= 3 else 2
    recipe = {2: "generalist-d-small", 3: "generalist-t-small"}[k]
    train(gpu_config(recipe), tmp_path / "local", quiet=True)
    seen = {}
    watcher = learners_seen(k, seen)
    train(gpu_config(recipe, "runtime.backend=ray", "runtime.gpus_per_learner=1"), tmp_path / "ray", quiet=True)
    watcher.join()
    gpu_ids = [tuple(seen[r]["gpus"]) for r in range(k)]
    assert all(len(ids) == 1 for ids in gpu_ids) and len(set(gpu_ids)) == k, gpu_ids
    assert_same_global(tmp_path / "local", tmp_path / "ray")


def test_two_learners_on_half_a_gpu_each_share_one_worker_by_default(gpu_ray, tmp_path):
    """The default grouping (placement.resolve_grouping): one process holds both learners on the GPU and mixes
    them with a device-local fold."""
    train(gpu_config("generalist-d-small"), tmp_path / "local", quiet=True)
    seen = {}
    watcher = learners_seen(1, seen)
    train(gpu_config("generalist-d-small", "runtime.backend=ray", "runtime.gpus_per_learner=0.5"), tmp_path / "ray",
          quiet=True)
    watcher.join()
    assert seen[0]["learners"] == [0, 1] and len(seen[0]["gpus"]) == 1, seen
    assert_same_global(tmp_path / "local", tmp_path / "ray")


def test_two_learner_processes_can_still_share_one_gpu(gpu_ray, tmp_path):
    """runtime.learners_per_worker=1: a process per learner on one GPU (NCCL refuses two ranks on one device, so
    the mixing group is gloo, staged through the host)."""
    train(gpu_config("generalist-d-small"), tmp_path / "local", quiet=True)
    seen = {}
    watcher = learners_seen(2, seen)
    train(gpu_config("generalist-d-small", "runtime.backend=ray", "runtime.gpus_per_learner=0.5",
                     "runtime.learners_per_worker=1"), tmp_path / "ray", quiet=True)
    watcher.join()
    gpu_ids = [tuple(seen[r]["gpus"]) for r in range(2)]
    assert all(len(ids) == 1 for ids in gpu_ids), gpu_ids
    assert_same_global(tmp_path / "local", tmp_path / "ray")


def test_a_learner_killed_on_the_gpu_is_restarted_and_the_run_ends_bit_identical(gpu_ray, tmp_path):
    overrides = ("schedule.epochs=3", "runtime.checkpoint_every_rounds=3")
    train(gpu_config("generalist-d-small", *overrides), tmp_path / "local", quiet=True)
    kills = []

    def kill_learner_at(step: int):
        coordinator = coordinator_handle(ray)
        while ray.get(coordinator.drain.remote())["global_step"] < step:
            time.sleep(0.05)
        pid = ray.get(coordinator.learners.remote())[1]["pid"]
        os.kill(pid, signal.SIGKILL)  # a real process death, with a CUDA context open
        kills.append(pid)

    killer = threading.Thread(target=kill_learner_at, args=(7,))
    killer.start()
    train(gpu_config("generalist-d-small", *overrides, "runtime.backend=ray", "runtime.gpus_per_learner=0.5",
                     "runtime.learners_per_worker=1", "runtime.max_failures=2"), tmp_path / "ray", quiet=True)
    killer.join()
    assert len(kills) == 1
    assert_same_global(tmp_path / "local", tmp_path / "ray")
