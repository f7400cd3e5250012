"""The Ray backend on a real local Ray: same numbers as in-process, placement, faults, clear errors."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest

from conftest import assert_same_tensors, coordinator_handle, fault_injector, final_global, read_jsonl
from generalist.distributed import train
from generalist.errors import BackendError, TrainingDiverged

pytestmark = pytest.mark.usefixtures("local_ray")


# The step clock with re-estimated BatchNorm statistics: 12 clock epochs over 20 steps, so rounds of 3 steps
# are cut at ticks inside data epochs, learners keep their own statistics at redistribution, and both the
# validation of the global learner and final/global.pt re-estimate theirs.
STEP_CLOCK = ("schedule.clock_epochs=12", "mixing.global_bn=reestimate", "mixing.bn_batches=3")


# Learners that share a worker (placement.resolve_grouping; the in-process backend ignores the setting):
# On CPUs (the local Ray's logical GPUs would be asked for by each learner, more than 3 in two workers of two).
ONE_WORKER = ("runtime.learners_per_worker=3", "runtime.device=cpu")  # a device-local fold, no collective
TWO_WORKERS = ("runtime.learners_per_worker=2", "runtime.device=cpu")  # [[natural, linf], [l2]]: two slots each


# Two learners on half a (logical) GPU each share one worker that asks for one GPU; with no CUDA device behind
# Ray's logical GPUs (runtime.device=auto) the worker trains on its CPU.
HALF_A_GPU_EACH = ("runtime.gpus_per_learner=0.5",)


# The ungrouped collective path (one learner a worker) is compared with in-process by
# test_each_learner_actor_gets_its_own_gpu_and_the_run_equals_in_process and by the fault-injection test.
@pytest.mark.parametrize("recipe,sync_every,extra,learners_per_worker",
                         [("generalist-t-small", 1, ONE_WORKER, 3),
                          ("generalist-t-small", 3, TWO_WORKERS, 2),
                          ("generalist-d-small", 3, (*STEP_CLOCK, *HALF_A_GPU_EACH), 2)],
                         ids=["t-sync1-one-worker", "t-sync3-two-learners-share-a-worker",
                              "d-sync3-step-clock-reestimated-bn-half-a-gpu-each"])
def test_ray_run_gives_the_same_global_weights_as_the_in_process_backend(tiny, tmp_path, recipe, sync_every, extra,
                                                                        learners_per_worker):
    """The collective path (broadcast before mix_start, all-gather after, redistribution) against in-process,
    also with learners grouped in workers (K = 3 in every grouping: tests/unit/test_collective_sync.py)."""
    config = tiny(recipe, "schedule.epochs=2", f"mixing.sync_every={sync_every}", *extra)
    train(config, tmp_path / "local", quiet=True)
    ray_config = tiny(recipe, "schedule.epochs=2", f"mixing.sync_every={sync_every}", *extra, "runtime.backend=ray")
    train(ray_config, tmp_path / "ray", quiet=True)
    assert_same_tensors(final_global(tmp_path / "local"), final_global(tmp_path / "ray"))
    placement = json.loads((tmp_path / "ray" / "metadata.json").read_text())["placement"]
    assert placement["learners_per_worker"] == learners_per_worker, placement  # the grouping ran as asked
    # Both backends stream the same metric tables.
    for table in ("rounds", "epochs"):
        assert (tmp_path / "ray" / "metrics" / f"{table}.parquet").is_file()


def test_each_learner_actor_gets_its_own_gpu_and_the_run_equals_in_process(tiny, tmp_path, local_ray):
    """One learner a worker, each asking for a (logical) GPU: the collective path between workers, K = 3."""
    overrides = ("schedule.epochs=2", "mixing.sync_every=1", "runtime.gpus_per_learner=1", "runtime.device=cpu")
    train(tiny("generalist-t-small", *overrides), tmp_path / "local", quiet=True)
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
    assert_same_tensors(final_global(tmp_path / "local"), final_global(tmp_path / "ray"))
    placement = json.loads((tmp_path / "ray" / "metadata.json").read_text())["placement"]
    assert placement["learners_per_worker"] == 1, placement


def test_more_learners_than_gpus_is_a_clear_error(tiny, tmp_path):
    # (Fractional GPUs, which let learners share one: the half-a-gpu-each parity case above.)
    too_many = tiny("generalist-t-small", "runtime.backend=ray", "runtime.gpus_per_learner=2", "runtime.device=cpu")
    with pytest.raises(BackendError, match=r"asked for 6 GPUs .* the cluster has 3"):
        train(too_many, tmp_path / "a", quiet=True)


def test_killed_learners_and_a_killed_coordinator_are_restarted_and_the_run_ends_bit_identical(
        tiny, tmp_path, local_ray):
    """Three deaths in one run (each after the run recovered from the one before): a learner mid-epoch 1, the
    coordinator, then the other learner inside epoch 2. Ray restarts a dead learner's group and a dead coordinator
    (whose new incarnation the learners meet at their next checkpoint or epoch end, and fail over from); every
    restart loads the last checkpoint. tests/ray/test_fault_soak.py (slow) kills 24 times."""
    overrides = ("schedule.epochs=3", "runtime.checkpoint_every_rounds=3")
    train(tiny("generalist-d-small", *overrides), tmp_path / "local", quiet=True)
    events: list[dict] = []
    killer = fault_injector(local_ray, [(7, 1), (13, "coordinator"), (19, 0)], time.time_ns(), events)
    train(tiny("generalist-d-small", *overrides, "runtime.backend=ray", "runtime.max_failures=3"),
          tmp_path / "ray", quiet=True)
    killer.join(timeout=60)
    assert [e["target"] for e in events] == [1, "coordinator", 0], events
    assert all("recovered_s" in e for e in events), events
    assert_same_tensors(final_global(tmp_path / "local"), final_global(tmp_path / "ray"))
    rows = [(r["learner"], r["global_step"]) for r in read_jsonl(tmp_path / "ray" / "metrics" / "rounds.jsonl")]
    assert len(rows) == len(set(rows)), "rounds re-run after a restart were logged twice"


def test_a_hung_learner_times_out_into_a_clear_error(tiny, tmp_path, local_ray):
    config = tiny("generalist-d-small", "schedule.epochs=3", "runtime.backend=ray", "runtime.max_failures=0",
                  "runtime.sync_timeout_s=4")
    stopped = []

    def hang_learner():
        coordinator = coordinator_handle(local_ray)
        while True:
            learners = local_ray.get(coordinator.learners.remote())
            if len(learners) == 2 and local_ray.get(coordinator.drain.remote())["global_step"] >= 3:
                break
            time.sleep(0.05)
        os.kill(learners[1]["pid"], signal.SIGSTOP)  # alive but never answers: a hang, not a crash
        stopped.append(learners[1]["pid"])

    thread = threading.Thread(target=hang_learner)
    thread.start()
    try:
        with pytest.raises(BackendError, match=r"never arrived"):
            train(config, tmp_path / "run", quiet=True)
    finally:
        thread.join()
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def watch_coordinator(ray, until, action=None, seen: list | None = None) -> threading.Thread:
    """A thread that polls the run's coordinator status (without draining its rows) until `until(status)`,
    then runs `action(coordinator, status)`; every status it saw goes into `seen`."""
    since = time.time_ns()

    def watch():
        coordinator = coordinator_handle(ray, since)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                status = ray.get(coordinator.status.remote(), timeout=30)
            except ray.exceptions.GetTimeoutError:
                continue  # its process is still starting (a minute on a loaded machine): not gone, ask again
            except Exception:  # noqa: BLE001 - the run ended and its coordinator is gone
                return
            if seen is not None:
                seen.append(status)
            if until(status):
                if action is not None:
                    action(coordinator, status)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def test_a_diverging_learner_ends_the_run_at_once_without_retries(tiny, tmp_path, local_ray):
    seen: list[dict] = []
    watcher = watch_coordinator(local_ray, lambda s: s["fatal"] is not None, seen=seen)
    with pytest.raises(TrainingDiverged, match="natural"):
        train(tiny("generalist-d-small", "runtime.backend=ray", "runtime.max_failures=3",
                   "learners.natural.lr=1e9"), tmp_path / "run", quiet=True)
    watcher.join()
    assert seen, "the watcher never reached the run's coordinator"
    joins = max(s["joins"] for s in seen)
    # Retried, the group would have joined 4 times (the start and 3 restarts), each failing the same way. (Not a
    # bound on wall time: with three test processes on two cores this run alone took 136 s, 43 s with two.)
    assert joins <= 2, f"the learner group was started {joins} times"


def test_a_group_that_fails_too_often_names_the_learner_and_its_exception(tiny, tmp_path, local_ray):
    def kill(coordinator, status):
        pid = local_ray.get(coordinator.learners.remote())[1]["pid"]
        os.kill(pid, signal.SIGKILL)

    watcher = watch_coordinator(local_ray, lambda s: s["global_step"] >= 3, kill)
    with pytest.raises(BackendError) as error:
        train(tiny("generalist-d-small", "runtime.backend=ray", "runtime.max_failures=0"), tmp_path / "run",
              quiet=True)
    watcher.join()
    message = str(error.value)
    # The dead learner comes first, with the exception Ray saw (a failed health check, a died actor); the other
    # learner's broken sync after it; none of Ray's generic out-of-memory advice, on one line.
    assert re.search(r"failed after 0 restart\(s\).*: learner 'natural' \(rank 1\): \w+Error: ", message), message
    assert "memory" not in message.lower() and "\n" not in message, message


def test_relative_data_and_run_paths_are_the_users_not_the_workers(tiny, tmp_path, data_root, monkeypatch):
    """A relative data folder and a relative run folder mean the driver's working directory; the workers run in
    Ray's session folder and get them resolved. ($GENERALIST_DATA, relative, goes through the same
    ray_backend.with_driver_paths: tests/unit/test_driver_paths.py.)"""
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(data_root, tmp_path)
    assert not os.path.isabs(relative)
    config = tiny("generalist-d-small", "schedule.epochs=1", "runtime.backend=ray", f'data.root="{relative}"')
    train(config, "run", quiet=True)
    assert (tmp_path / "run" / "final" / "global.pt").is_file()
    assert read_config_root(tmp_path / "run") == relative  # what the user wrote is what config.json keeps


def read_config_root(run) -> str | None:
    import json

    return json.loads((run / "config.json").read_text())["data"]["root"]
