"""A TorchTrainer the driver can stop at once: for failures that a restart would only repeat.

Ray Train retries every worker failure up to `FailureConfig.max_failures`, whatever its cause. A diverged loss,
a bad config or a bad dataset fails the same way on every retry, so the driver aborts the run as soon as the
coordinator reports such an error. Ray Train aborts a run through its controller actor (what Ctrl-C does), but
`fit()` does not hand out the controller's handle; this subclass keeps it. The method it overrides is Ray
2.60's own (`DataParallelTrainer._initialize_and_run_controller`, pinned in requirements/lock.in), with the
handle stored; tests/ray/test_ray_errors.py fails if the abort stops working.

It also gives Ray Train's own barrier a deadline. `ray.train.report` waits for every worker (the workers agree
on the checkpoint's folder), with no timeout by default, so a learner that hangs after the last sync and before
a checkpoint would hold the others there forever, out of reach of runtime.sync_timeout_s. The controller gets
RAY_TRAIN_COLLECTIVE_TIMEOUT_S (the barrier lives in an actor the controller starts), unless the user set it.

And it stops waiting sooner for a dead group's torch process group: after a worker failed, the controller waits
up to TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S (30 s by default) for every worker to destroy it, and a hung
worker never does; the workers are killed next anyway, so that wait only delays the restart or the error
(measured: 30 s of the hung-learner test's 71 s). A healthy group is destroyed in well under a second.
"""

from __future__ import annotations

import os
import threading

import ray
from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR
from ray.train.constants import TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.constants import (COLLECTIVE_TIMEOUT_S_ENV_VAR,
                                              DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
                                              get_env_vars_to_propagate)
from ray.train.v2._internal.execution.controller import TrainController

# Seconds the controller waits for the workers to destroy their torch process group after a failure (Ray's
# default is 30); the user's TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S wins.
PROCESS_GROUP_SHUTDOWN_TIMEOUT_S = 5


class AbortableTorchTrainer(TorchTrainer):
    """`fit()` as usual; `abort()` from another thread ends the run without a retry. `report_timeout_s`: how
    long a worker waits in `ray.train.report` for the others before it fails (BroadcastCollectiveTimeoutError)."""

    def __init__(self, *args, report_timeout_s: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._report_timeout_s = report_timeout_s
        self._controller = None
        self._started = threading.Event()

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        # Ray 2.60's body, minus its SIGINT handler (fit runs in the driver's worker thread here).
        env_vars = get_env_vars_to_propagate()
        env_vars.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
        if self._report_timeout_s is not None:  # ours, unless the user set Ray Train's variable
            env_vars.setdefault(COLLECTIVE_TIMEOUT_S_ENV_VAR, str(self._report_timeout_s))
        # Not among the variables Ray Train propagates, so the user's value is read here.
        env_vars[TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S] = os.environ.get(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
                                                                          str(PROCESS_GROUP_SHUTDOWN_TIMEOUT_S))
        controller_actor_cls = ray.remote(
            num_cpus=0,
            label_selector={ray._raylet.RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()},
            runtime_env={"env_vars": env_vars},
        )(TrainController)
        self._controller = controller_actor_cls.remote(**controller_init_kwargs)
        self._started.set()
        ray.get(self._controller.run.remote())
        return ray.get(self._controller.get_result.remote())

    def abort(self, timeout_s: float = 60.0) -> None:
        """Stop the worker group and end `fit()`; no retry follows."""
        if self._started.wait(timeout_s) and self._controller is not None:
            try:
                ray.get(self._controller.abort.remote(), timeout=timeout_s)
            except ray.exceptions.RayError:
                pass  # the controller ended on its own meanwhile: the run is over either way
