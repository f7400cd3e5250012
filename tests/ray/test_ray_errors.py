"""The Ray backend's failures that a restart would only repeat end the run with one clear error: a hung learner
(runtime.sync_timeout_s), a diverging one (no retries), a group that fails more often than
runtime.max_failures allows."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

from conftest import coordinator_handle
from generalist.distributed import train
from generalist.errors import BackendError, TrainingDiverged

pytestmark = pytest.mark.usefixtures("local_ray")


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
