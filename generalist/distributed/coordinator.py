"""The coordinator actor: gathers the learners' EMAs each round, mixes the global learner, hands it back.

It owns the mixing schedule and the global EMA (a `GlobalLearner`, the same class the in-process backend
uses), acts as the per-round barrier of the learner actors, and relays their metrics to the driver.
"""

from __future__ import annotations

import asyncio
import time

import ray

from generalist.config import RunConfig
from generalist.distributed.flat_state import FlatLayout
from generalist.mixing import GlobalLearner, StateDict, clone_state


@ray.remote(num_cpus=0)
class Coordinator:
    """One per run. Async actor: each learner's `exchange` call waits until all K have handed in."""

    def __init__(self, config: RunConfig, initial_state: StateDict):
        self.config = config
        self.num_learners = len(config.learners)
        self.initial_state = initial_state
        self.layout = FlatLayout(initial_state)
        # The global state lives in one flat buffer, so each broadcast is a single put of one array.
        self.global_flat, state = self.layout.writable_copy(initial_state)
        self.global_learner = GlobalLearner(config, state, copy=False)
        self.global_step = 0
        self.pending: dict[int, StateDict] = {}
        self.result: asyncio.Future | None = None
        self.joined: dict[int, dict | None] = {}
        self.join_done: asyncio.Future | None = None
        self.rows: list[tuple[str, dict]] = []  # ("rounds" | "epochs" | "restart", row), drained by the driver
        self.learner_pids: dict[int, int] = {}
        self.learner_gpus: dict[int, list[str]] = {}  # the GPU ids Ray gave each learner actor
        self.last_sync_s = 0.0
        self.restarts = 0

    # --- learner group start / restart -------------------------------------------------------------

    async def join(self, rank: int, pid: int, gpu_ids: list, start_step: int, global_payload: dict | None) -> int:
        """Barrier at (re)start of the learner group; rank 0 brings the checkpoint's global state.

        Every (re)start resets the round state, so a learner that died mid-round leaves nothing behind."""
        if self.join_done is None or self.join_done.done():
            self.join_done = asyncio.get_running_loop().create_future()
            self.joined = {}
            self.pending = {}
            if self.result is not None and not self.result.done():
                self.result.cancel()
            self.result = None
        self.learner_pids[rank] = pid
        self.learner_gpus[rank] = [str(g) for g in gpu_ids]
        self.joined[rank] = global_payload if rank == 0 else None
        if len(self.joined) == self.num_learners:
            payload = self.joined[0]
            self.global_learner.load_state_dict(
                payload if payload is not None else {"state": self.initial_state, "ema_steps": 0})
            if self.global_step > start_step:
                self.restarts += 1
            self.global_step = start_step
            self.rows.append(("restart", {"global_step": start_step}))
            self.join_done.set_result(start_step)
        return await self.join_done

    # --- one round ---------------------------------------------------------------------------------

    async def exchange(self, rank: int, epoch: int, n_steps: int, ema_flat, ema_others: StateDict):
        """Hand in learner `rank`'s EMA (packed by FlatLayout) after a round; returns [ref] to the global
        state to load, or None.

        The global state is put into the object store once per round and the same reference goes to
        every learner (wrapped in a list so Ray does not resolve it on the way)."""
        if self.result is None or self.result.done():
            self.result = asyncio.get_running_loop().create_future()
        result = self.result
        self.pending[rank] = self.layout.unpack(ema_flat, ema_others)
        if len(self.pending) == self.num_learners:
            start = time.perf_counter()
            states = [self.pending[k] for k in range(self.num_learners)]
            self.pending = {}
            redistribute = self.global_learner.sync(states, epoch, n_steps)
            self.global_step += n_steps
            ref = ray.put(self._packed()) if redistribute else None
            self.last_sync_s = time.perf_counter() - start
            result.set_result(ref)
        ref = await result
        return None if ref is None else [ref]

    def missing(self) -> list[int]:
        """Ranks that have not handed in for the round in progress (the suspects when a sync hangs)."""
        return [k for k in range(self.num_learners) if k not in self.pending] if self.pending else []

    # --- state for evaluation and checkpoints -------------------------------------------------------

    def _packed(self) -> tuple:
        others = {n: t for n, t in self.global_learner.state.items() if not t.is_floating_point()}
        return self.global_flat, others

    def global_ref(self) -> list:
        """[ref] to the packed global state (unpack with FlatLayout)."""
        return [ray.put(self._packed())]

    def payload(self) -> dict:
        # A snapshot: the reply is serialised after this returns, when a round may already be updating the state.
        return {"state": clone_state(self.global_learner.state), "ema_steps": self.global_learner.ema_steps}

    def report_rows(self, table: str, rows: list[dict]) -> None:
        self.rows.extend((table, row) for row in rows)

    def drain(self) -> dict:
        """Rows since the last drain, plus status for the driver's progress line."""
        rows, self.rows = self.rows, []
        return {"rows": rows, "global_step": self.global_step, "last_sync_s": self.last_sync_s,
                "restarts": self.restarts}

    def learners(self) -> dict[int, dict]:
        """Process id and GPU ids of each learner actor (for operators, and for fault-injection tests)."""
        return {k: {"pid": pid, "gpus": self.learner_gpus.get(k, [])} for k, pid in self.learner_pids.items()}
