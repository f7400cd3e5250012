"""Ray Train's report barrier falls under our deadline: `ray.train.report` waits for every worker, with no
timeout of its own, so a learner that hangs between the last sync and a checkpoint would hold the others there
forever. The trainer gives the barrier runtime.sync_timeout_s plus a margin, and a worker that times out there
says which learners never arrived, as a hung sync does. (On a loaded 2-core machine the hung-learner test once
waited 7 minutes for Ray's health check with rank 0 never raising; a learner stopped just after the epoch's last
sync, in this barrier's reach only, is the likely cause.)"""

from __future__ import annotations

import pytest
import ray
from ray.train import ScalingConfig
from ray.train.constants import TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
from ray.train.v2._internal.constants import COLLECTIVE_TIMEOUT_S_ENV_VAR
from ray.train.v2._internal.exceptions import BroadcastCollectiveTimeoutError

from generalist.distributed import abortable_trainer, ray_backend
from generalist.distributed.abortable_trainer import AbortableTorchTrainer
from generalist.distributed.ray_backend import WorkerSink, report_timeout_s
from generalist.errors import BackendError


def barrier_timeout(missing_ranks: list[int], as_ray_raises_it: bool) -> Exception:
    error = BroadcastCollectiveTimeoutError(time_elapsed=64.0, missing_ranks=missing_ranks, timeout_s=64.0)
    if as_ray_raises_it:  # ray.get re-raises a RayTaskError that is also an instance of the cause's class
        return ray.exceptions.RayTaskError("broadcast_from_rank_zero", "traceback", error).as_instanceof_cause()
    return error


def sink_for(config, rank: int) -> WorkerSink:
    sink = WorkerSink.__new__(WorkerSink)  # no coordinator, no Ray: only the checkpoint path is exercised
    sink.config, sink.rank, sink.best = config, rank, None
    sink.send_and_wait = lambda table, rows: None
    return sink


@pytest.mark.parametrize("as_ray_raises_it", [False, True], ids=["plain", "as-ray-raises-it"])
def test_a_checkpoint_barrier_that_times_out_names_the_learners_of_the_missing_worker(tiny, monkeypatch,
                                                                                      as_ray_raises_it):
    # generalist-t with two learners a worker: workers [[natural, linf], [l2]]; worker 1 never came.
    config = tiny("generalist-t-small", "runtime.learners_per_worker=2", "runtime.device=cpu",
                  "runtime.sync_timeout_s=4")

    def report(*args, **kwargs):
        raise barrier_timeout([1], as_ray_raises_it)

    monkeypatch.setattr(ray_backend.ray_train, "report", report)
    with pytest.raises(BackendError, match=r"worker 0: learner\(s\) \[2\] never arrived at the checkpoint of step 10 "
                                           r"\(hung or too slow\) within 64 s"):
        sink_for(config, 0).checkpoint(10, {}, True, None)


def test_a_barrier_timeout_without_ranks_still_says_a_peer_never_arrived(tiny, monkeypatch):
    def report(*args, **kwargs):
        raise barrier_timeout([], True)

    monkeypatch.setattr(ray_backend.ray_train, "report", report)
    with pytest.raises(BackendError, match="a peer never arrived"):
        sink_for(tiny("generalist-d-small", "runtime.learners_per_worker=1"), 1).checkpoint(3, {}, False, None)


def test_the_report_deadline_is_ours_plus_a_margin_for_the_global_learners_evaluation():
    assert report_timeout_s(4) == 64 and report_timeout_s(600) == 660


class FakeController:
    def __init__(self, **kwargs):
        pass

    class _Method:
        def remote(self):
            return None

    run = get_result = _Method()


def controller_env(monkeypatch, report_timeout) -> dict:
    """The env_vars the trainer starts its controller actor with (no Ray: its remote decorator is captured)."""
    seen = {}

    def remote(**options):
        seen.update(options["runtime_env"]["env_vars"])
        return lambda cls: type("Handle", (), {"remote": staticmethod(lambda **kw: FakeController())})

    monkeypatch.setattr(abortable_trainer.ray, "remote", remote)
    monkeypatch.setattr(abortable_trainer.ray, "get", lambda ref, **kw: None)
    monkeypatch.setattr(abortable_trainer.ray, "get_runtime_context",
                        lambda: type("Context", (), {"get_node_id": lambda self: "node"})())
    trainer = AbortableTorchTrainer(lambda: None, scaling_config=ScalingConfig(num_workers=1),
                                    report_timeout_s=report_timeout)
    trainer._initialize_and_run_controller()
    return seen


def test_the_controller_gets_our_report_deadline_unless_the_user_set_ray_trains_own(monkeypatch):
    monkeypatch.delenv(COLLECTIVE_TIMEOUT_S_ENV_VAR, raising=False)
    assert controller_env(monkeypatch, 64.0)[COLLECTIVE_TIMEOUT_S_ENV_VAR] == "64.0"
    monkeypatch.setenv(COLLECTIVE_TIMEOUT_S_ENV_VAR, "900")
    assert controller_env(monkeypatch, 64.0)[COLLECTIVE_TIMEOUT_S_ENV_VAR] == "900"


def test_the_controller_stops_waiting_for_a_dead_groups_process_group_after_5_s_unless_the_user_says(monkeypatch):
    monkeypatch.delenv(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, raising=False)
    assert controller_env(monkeypatch, None)[TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S] == "5"
    monkeypatch.setenv(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, "45")
    assert controller_env(monkeypatch, None)[TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S] == "45"
