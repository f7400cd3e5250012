"""The Ray backend on a real local Ray: the same numbers as in-process, placement, the user's relative paths.
(Dead actors: test_ray_faults.py; failures that end a run with one error: test_ray_errors.py.)"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from conftest import assert_same_tensors, coordinator_handle, final_global
from generalist.distributed import train
from generalist.errors import BackendError

pytestmark = pytest.mark.usefixtures("local_ray")


# The step clock with re-estimated BatchNorm statistics: 12 clock epochs over 20 steps, so rounds of 3 steps
# are cut at ticks inside data epochs, learners keep their own statistics at redistribution, and both the
# validation of the global learner and final/global.pt re-estimate theirs.
STEP_CLOCK = ("schedule.clock_epochs=12", "mixing.global_bn=reestimate", "mixing.bn_batches=3")


# Learners that share a worker (placement.resolve_grouping; the in-process backend ignores the setting):
# on CPUs (the local Ray's logical GPUs would be asked for by each learner, more than 3 in two workers of two).
ONE_WORKER = ("runtime.learners_per_worker=3", "runtime.device=cpu")  # a device-local fold, no collective


# Learners on half a (logical) GPU each share a worker that asks for one GPU, two to a worker: K = 3 gives
# [[natural, linf], [l2]] (the grouping that runtime.learners_per_worker=2 gives: tests/unit/test_placement.py).
# With no CUDA device behind Ray's logical GPUs (runtime.device=auto) the workers train on their CPUs.
HALF_A_GPU_EACH = ("runtime.gpus_per_learner=0.5",)


# The ungrouped collective path (one learner a worker) is compared with in-process by
# test_each_learner_actor_gets_its_own_gpu_and_the_run_equals_in_process and by test_ray_faults.py. Three learners
# in one worker (no collective at all) is the slow case: the same fold runs in-process in
# tests/unit/test_collective_sync.py, and `make test` keeps to its 10 minutes (issue 23, item 8).
@pytest.mark.parametrize("recipe,sync_every,extra,learners_per_worker",
                         [pytest.param("generalist-t-small", 1, ONE_WORKER, 3, marks=pytest.mark.slow),
                          ("generalist-t-small", 3, (*STEP_CLOCK, *HALF_A_GPU_EACH), 2)],
                         ids=["t-sync1-one-worker",
                              "t-sync3-step-clock-reestimated-bn-two-learners-on-half-a-gpu-each-share-a-worker"])
def test_ray_run_gives_the_same_global_weights_as_the_in_process_backend(tiny, tmp_path, data_root, monkeypatch,
                                                                        recipe, sync_every, extra, learners_per_worker):
    """The collective path (broadcast before mix_start, all-gather after, redistribution) against in-process,
    also with learners grouped in workers (K = 3 in every grouping: tests/unit/test_collective_sync.py).

    The Ray run is given its data folder and run folder as relative paths: they mean the driver's working
    directory, while the workers run in Ray's session folder and must get them resolved. (A run of its own for
    that cost 30 CPU-seconds of `make test`; $GENERALIST_DATA, relative, goes through the same
    ray_backend.with_driver_paths: tests/unit/test_driver_paths.py.)"""
    local = tmp_path / "local"
    train(tiny(recipe, "schedule.epochs=2", f"mixing.sync_every={sync_every}", *extra), local, quiet=True)
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(data_root, tmp_path)
    assert not os.path.isabs(relative)
    ray_config = tiny(recipe, "schedule.epochs=2", f"mixing.sync_every={sync_every}", *extra, "runtime.backend=ray",
                      f'data.root="{relative}"')
    train(ray_config, "ray", quiet=True)
    assert_same_tensors(final_global(local), final_global(tmp_path / "ray"))
    assert read_config_root(tmp_path / "ray") == relative  # what the user wrote is what config.json keeps
    placement = json.loads((tmp_path / "ray" / "metadata.json").read_text())["placement"]
    assert placement["learners_per_worker"] == learners_per_worker, placement  # the grouping ran as asked
    # Both backends stream the same metric tables.
    for table in ("rounds", "epochs"):
        assert (tmp_path / "ray" / "metrics" / f"{table}.parquet").is_file()


def test_each_learner_actor_gets_its_own_gpu_and_the_run_equals_in_process(tiny, tmp_path, local_ray):
    """One learner a worker, each asking for a (logical) GPU: the collective path between workers, K = 3."""
    overrides = ("schedule.epochs=2", "mixing.sync_every=1", "runtime.gpus_per_learner=1", "runtime.device=cpu")
    local = tmp_path / "local"
    train(tiny("generalist-t-small", *overrides), local, quiet=True)
    seen = {}

    def watch():
        coordinator = coordinator_handle(local_ray)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            learners = local_ray.get(coordinator.learners.remote())
            if len(learners) == 3:
                seen.update(learners)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    train(tiny("generalist-t-small", *overrides, "runtime.backend=ray"), tmp_path / "ray", quiet=True)
    watcher.join()
    gpu_ids = [tuple(seen[k]["gpus"]) for k in range(3)]
    assert all(len(ids) == 1 for ids in gpu_ids), gpu_ids
    assert len(set(gpu_ids)) == 3, f"learners share GPUs: {gpu_ids}"
    assert_same_tensors(final_global(local), final_global(tmp_path / "ray"))
    placement = json.loads((tmp_path / "ray" / "metadata.json").read_text())["placement"]
    assert placement["learners_per_worker"] == 1, placement


def test_more_learners_than_gpus_is_a_clear_error(tiny, tmp_path):
    # (Fractional GPUs, which let learners share one: the half-a-gpu-each parity case above.)
    too_many = tiny("generalist-t-small", "runtime.backend=ray", "runtime.gpus_per_learner=2", "runtime.device=cpu")
    with pytest.raises(BackendError, match=r"asked for 6 GPUs .* the cluster has 3"):
        train(too_many, tmp_path / "a", quiet=True)


def read_config_root(run) -> str | None:
    return json.loads((run / "config.json").read_text())["data"]["root"]
