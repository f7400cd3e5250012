"""A TorchTrainer the driver can stop at once: for failures that a restart would only repeat.

Ray Train retries every worker failure up to `FailureConfig.max_failures`, whatever its cause. A diverged loss,
a bad config or a bad dataset fails the same way on every retry, so the driver aborts the run as soon as the
coordinator reports such an error. Ray Train aborts a run through its controller actor (what Ctrl-C does), but
`fit()` does not hand out the controller's handle; this subclass keeps it. The method it overrides is Ray
2.60's own (`DataParallelTrainer._initialize_and_run_controller`, pinned in requirements/lock.in), with the
handle stored; tests/ray/test_ray_backend.py fails if the abort stops working.
"""

from __future__ import annotations

import threading

import ray
from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.constants import DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE, get_env_vars_to_propagate
from ray.train.v2._internal.execution.controller import TrainController


class AbortableTorchTrainer(TorchTrainer):
    """`fit()` as usual; `abort()` from another thread ends the run without a retry."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._controller = None
        self._started = threading.Event()

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        # Ray 2.60's body, minus its SIGINT handler (fit runs in the driver's worker thread here).
        env_vars = get_env_vars_to_propagate()
        env_vars.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
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
