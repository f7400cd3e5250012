"""The coordinator actor: the run's control plane, off the data path.

It decides and records; it never touches a weight. The learners' states move device to device through the
worker group's collectives (generalist.distributed.collective_sync). The coordinator keeps:
- membership and (re)starts: the barrier every (re)started worker group passes, and the restart count (a
  worker holds one learner, or the learners that share its GPU: placement.resolve_grouping);
- the mixing plan: what each epoch's syncs do (weights, redistribution), handed to the learners at join;
- arrivals: the step each worker last reached a sync for, so a worker stuck in a collective can name the
  learners that never arrived;
- the metrics relay: learners' rows, drained by the driver, which writes them to the run folder;
- the run's fatal error: a learner that meets an error a restart would only repeat (a diverged loss) records
  it here, and the driver ends the run at once instead of letting Ray Train retry it.

The driver creates it restartable: if its process dies, Ray starts it again under the same name. A new
incarnation knows nothing of the old one's state, so the learners, on seeing a new incarnation, fail over
to their last checkpoint like after any process failure (generalist.distributed.ray_backend).
"""

from __future__ import annotations

import asyncio
import os
import time

import ray

from generalist.config import RunConfig
from generalist.distributed.mixing_group import LearnerDevice, choose_backend, on_one_node_cpus
from generalist.distributed.placement import config_groups
from generalist.errors import ConfigError
from generalist.mixing import mixing_plan


@ray.remote(num_cpus=0)
class Coordinator:
    """One per run. Async actor: a join waits until every worker of a (re)started group has joined. Workers are
    named by their rank (Ray Train's world rank); `groups[rank]` are the learners a worker holds."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.groups = config_groups(config)
        self.num_workers = len(self.groups)
        self.plan = mixing_plan(config)
        self.global_step = 0  # the step every learner has reached a sync for
        self.arrived: dict[int, int] = {}
        self.steps_done: dict[int, int] = {}  # heartbeats: optimiser steps each learner reported having done
        self.joined: dict[int, int] = {}
        self.join_done: asyncio.Future | None = None
        self.rows: list[tuple[str, dict]] = []  # ("rounds" | "epochs" | "restart", row), drained by the driver
        self.learner_pids: dict[int, int] = {}
        self.learner_gpus: dict[int, list[str]] = {}  # the GPU ids Ray gave each learner actor
        self.learner_devices: dict[int, LearnerDevice] = {}  # where each learner trains, as it reported at join
        self.restarts = 0
        self.joins = 0  # learner groups (re)started under this incarnation
        self.incarnation = time.time_ns()  # a restarted coordinator is a new incarnation
        self.fatal: dict | None = None

    # --- learner group start / restart -------------------------------------------------------------

    async def join(self, rank: int, pid: int, gpu_ids: list, start_step: int, node: str = "",
                   device: str = "cpu") -> dict:
        """Barrier at (re)start of the learner group; returns the mixing plan every learner follows and the
        mixing group's backend, decided once from every learner's device (mixing_group.choose_backend), and
        whether it gathers through shared memory (mixing_group.on_one_node_cpus).

        Every (re)start resets the arrivals, so a learner that died mid-round leaves nothing behind."""
        if self.join_done is None or self.join_done.done():
            self.join_done = asyncio.get_running_loop().create_future()
            self.joined = {}
        self.learner_pids[rank] = pid
        self.learner_gpus[rank] = [str(g) for g in gpu_ids]
        self.learner_devices[rank] = LearnerDevice(rank, node, device)
        self.joined[rank] = start_step
        if len(self.joined) == self.num_workers:
            steps = set(self.joined.values())
            try:
                devices = [self.learner_devices[k] for k in sorted(self.joined)]
                backend, shared_memory = choose_backend(devices), on_one_node_cpus(devices)
            except ConfigError as error:  # a restart would meet the same devices: the run's error
                self.fail(rank, type(error).__name__, str(error))
                self.join_done.set_exception(error)
                return await self.join_done
            if len(steps) > 1:  # the learners' checkpoints disagree: the run cannot be mixed consistently
                self.join_done.set_exception(RuntimeError(f"learners resumed at different steps: {self.joined}"))
            else:
                (step,) = steps
                if self.global_step > step:
                    self.restarts += 1
                self.global_step = step
                self.joins += 1
                self.arrived = {k: step for k in range(self.num_workers)}
                self.rows.append(("restart", {"global_step": step}))
                self.join_done.set_result({"start_step": step, "plan": self.plan, "incarnation": self.incarnation,
                                           "mixing_backend": backend, "shared_memory": shared_memory})
        return await self.join_done

    # --- arrivals: who reached which sync ----------------------------------------------------------

    def arrive(self, rank: int, step: int) -> None:
        """Worker `rank` entered the sync that ends at optimiser step `step` (sent without waiting)."""
        self.arrived[rank] = max(step, self.arrived.get(rank, 0))
        if len(self.arrived) == self.num_workers:
            self.global_step = min(self.arrived.values())

    def beat(self, rank: int, steps_done: int) -> None:
        """Worker `rank`'s heartbeat: the optimiser steps its learners have done (sent every few seconds)."""
        self.steps_done[rank] = steps_done

    def progress(self) -> tuple:
        """Where every learner is, by its arrivals and its heartbeats: a waiting learner counts any change as
        progress (generalist.distributed.collective_sync), so a slow learner is not taken for a hung one."""
        return tuple(sorted(self.arrived.items())), tuple(sorted(self.steps_done.items()))

    def missing(self, step: int) -> list[int]:
        """The learners whose worker has not reached the sync ending at `step` (the suspects when a sync hangs)."""
        return [k for rank, group in enumerate(self.groups) if self.arrived.get(rank, -1) < step for k in group]

    # --- metrics relay and status ------------------------------------------------------------------

    def report_rows(self, table: str, rows: list[dict]) -> int:
        """Keep rows for the driver; returns this incarnation (a learner that waits for the answer checks it)."""
        self.rows.extend((table, row) for row in rows)
        return self.incarnation

    def fail(self, rank: int, error_type: str, message: str) -> None:
        """Learner `rank` met an error that a restart would repeat; the first one is the run's error."""
        if self.fatal is None:
            self.fatal = {"rank": rank, "type": error_type, "message": message}

    def drain(self) -> dict:
        """Rows since the last drain, plus status for the driver's progress line."""
        rows, self.rows = self.rows, []
        return {"rows": rows, "global_step": self.global_step, "restarts": self.restarts,
                "incarnation": self.incarnation, "fatal": self.fatal}

    def status(self) -> dict:
        """Where the run is, without taking the rows the driver drains (for operators and tests)."""
        return {"global_step": self.global_step, "restarts": self.restarts, "joins": self.joins,
                "incarnation": self.incarnation, "pid": os.getpid(), "fatal": self.fatal,
                "node": ray.get_runtime_context().get_node_id()}

    def learners(self) -> dict[int, dict]:
        """Process id, GPU ids, node and learners of each worker, by rank (for operators, and for fault-injection
        tests); with one learner per worker, rank k holds learner k."""
        return {k: {"pid": pid, "gpus": self.learner_gpus.get(k, []), "learners": self.groups[k],
                    "node": self.learner_devices[k].node if k in self.learner_devices else ""}
                for k, pid in self.learner_pids.items()}
