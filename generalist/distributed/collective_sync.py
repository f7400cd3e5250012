"""The mixing data path of the Ray backend: learners' EMAs move device to device through the process group.

Every worker process holds its group of base learners (one, or the learners that share its GPU:
placement.resolve_grouping) and a replica of the global learner. At a sync each worker hands its learners'
packed EMA buffers (generalist.packed_state) to one collective of the mixing group (NCCL between GPUs, gloo
otherwise, and for workers on the CPUs of one node a gather through shared memory: shared_memory_gather): an
all-gather while several workers' learners carry weight, a broadcast from the anchor's worker while it alone
does (before mix_start). A group of one worker (every learner in one process) moves nothing:
the fold is device-local. Every replica then folds the same bytes into its global learner with the same
`GlobalLearner` arithmetic as the in-process backend, in learner order, so the replicas and the in-process
backend agree bit for bit and redistribution is a device-local copy.

Off the critical path: a sync outside a communication epoch returns at once; the collective and the fold run
on a background thread (on a side CUDA stream on a GPU) while the learner trains its next round. At most one
round is in flight: the next sync, a checkpoint or an evaluation first waits for it. The buffer handed in is
left untouched by the learner until then (Learner keeps a spare EMA buffer), so no snapshot copy is made.

A wait ends in a clear error naming the learners that never reached the sync (as told by `missing(step)`, the
coordinator's record of arrivals), never in a silent wait on a dead collective, once no learner has made
progress for `timeout_s`: the deadline counts from when the round was queued, and moves on whenever the
arrivals change (`progress()`, a heartbeat), so a slow learner is not mistaken for a hung one. Then the group
is aborted (mixing_group.abort_group), whose own timeout is set past ours so that ours fires first.

Devices are explicit: the background thread sets the learner's device before its first CUDA call, and every
event and stream wait names that device, so no process makes a context on another GPU.

Only torch.distributed here, no Ray: the class is tested with plain processes. A learner that is itself
several data-parallel workers would take part through one member per learner (`group`) and broadcast the
global state to its replicas after the fold; the members' order in `group` is the learners' order.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

import torch
import torch.distributed as dist

from generalist.config import RunConfig
from generalist.distributed.mixing_group import abort_group
from generalist.distributed.shared_memory_gather import open_shared_gather
from generalist.errors import BackendError
from generalist.mixing import GlobalLearner, mixing_plan
from generalist.packed_state import StateDict


class Arrivals(Protocol):
    """Where a learner tells the coordinator which sync it reached: cheaply at every sync (it may batch),
    and for sure before it blocks."""

    def arrive(self, step: int) -> None: ...

    def flush(self) -> None: ...


class _NoArrivals:
    def arrive(self, step: int) -> None:
        pass

    def flush(self) -> None:
        pass


class CollectiveSync:
    """One worker's side of the mixing (implements generalist.training.Sync for the learners it holds).

    `rank` is the worker's rank in `group`; `groups[rank]` are the learner indices it holds (default: one learner
    per worker, learner k at rank k)."""

    def __init__(self, config: RunConfig, rank: int, global_learner: GlobalLearner, *,
                 groups: list[list[int]] | None = None,
                 group: dist.ProcessGroup | None = None, timeout_s: float = 600.0,
                 arrivals: Arrivals | None = None,
                 missing: Callable[[int], list[int]] | None = None,
                 progress: Callable[[], object] | None = None, poll_s: float = 2.0, start_step: int = 0,
                 plan: dict[int, tuple[list[float], bool]] | None = None, shared_memory: bool = False):
        self.config = config
        self.rank = rank
        self.groups = groups if groups is not None else [[k] for k in range(len(config.learners))]
        if sorted(k for g in self.groups for k in g) != list(range(len(config.learners))):
            raise BackendError(f"worker groups {self.groups} do not hold learners 0..{len(config.learners) - 1} "
                               "once each")
        self.local = self.groups[rank]
        self.who = f"learner {self.local[0]}" if len(self.local) == 1 else f"learners {self.local}"
        # learner index -> (rank of its worker, its slot in that worker's part of the gathered buffer)
        self.where = {k: (r, slot) for r, g in enumerate(self.groups) for slot, k in enumerate(g)}
        self.global_learner = global_learner
        self.layout = global_learner.layout
        self.group = group
        self.world = dist.get_world_size(group) if group is not None or dist.is_initialized() else 1
        if self.world != len(self.groups):
            raise BackendError(f"the process group has {self.world} members for {len(self.groups)} worker(s) "
                               f"holding learners {self.groups}")
        self.timeout_s = timeout_s
        self.arrivals = arrivals or _NoArrivals()
        self.missing = missing or (lambda step: [])
        self.progress = progress or (lambda: None)
        self.poll_s = poll_s
        self.step = start_step  # optimiser steps folded in once the round in flight is done
        # epoch -> (weights, communicate): the coordinator's plan in the Ray backend, else the config's own.
        self.plan = plan if plan is not None else mixing_plan(config)
        device = global_learner.buffer.device
        self.device = device
        # gloo moves CUDA tensors through the host itself; staging them explicitly keeps one code path for it.
        self.staged = self.world > 1 and device.type == "cuda" and "nccl" not in str(dist.get_backend(group))
        wire = "cpu" if self.staged else device
        # One slot per learner of the largest worker group: a collective takes equal sizes from every member.
        self.slots = max(len(g) for g in self.groups)
        shape = (self.slots, self.layout.nbytes)
        # Workers on the CPUs of one node (shared_memory, decided at join) gather through /dev/shm, not gloo's TCP.
        self.shared = open_shared_gather(group, rank, self.world, shape) \
            if shared_memory and self.world > 1 and device.type == "cpu" else None
        self.gathered = torch.empty(self.world, *shape, dtype=torch.uint8, device=wire) \
            if self.world > 1 and self.shared is None else None
        # Only a worker of one learner on a device the collective reads sends its EMA buffer as it is (and the
        # shared-memory gather writes each EMA into its slot itself).
        self.send = torch.empty(shape, dtype=torch.uint8, device=wire) \
            if self.staged or (self.slots > 1 and self.shared is None) else None
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.in_flight: Future | None = None
        self.in_flight_step = 0
        self.in_flight_since = 0.0  # time.monotonic() when the round in flight was queued
        self.lagging: int | None = None  # the learner whose replica alone is current (see _fold)
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        # A daemon thread: a collective that never returns (a hung peer) must not keep the process alive.
        self.worker = threading.Thread(target=self._serve, name="generalist-mixing", daemon=True)
        self.worker.start()

    # --- the Sync protocol -------------------------------------------------------------------------

    def exchange(self, epoch: int, n_steps: int, emas: dict[int, torch.Tensor]) -> StateDict | None:
        if sorted(emas) != self.local:
            raise BackendError(f"worker {self.rank} holds learners {self.local}, got EMAs of {sorted(emas)}")
        self.wait()  # the round before: at most one in flight, and the buffers it read are free again
        target = self.step + n_steps
        self.arrivals.arrive(target)
        self.in_flight, self.in_flight_step, self.in_flight_since = Future(), target, time.monotonic()
        self.jobs.put(((emas, epoch, n_steps, self._ready_event()), self.in_flight))
        self.step = target
        if not self.plan[epoch][1]:
            return None  # nobody needs the global state before the next sync: train on meanwhile
        self.wait()  # the learners load it now
        return self.global_learner.state

    def _ready_event(self):
        """On a GPU: an event the side stream waits for, so a job starts once the learner's work so far (this
        round's EMA updates) is done."""
        if self.stream is None:
            return None
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))
        return ready

    def global_payload(self) -> dict:
        self._check_settled()
        return self.global_learner.state_dict()

    def global_state(self) -> StateDict:
        self._check_settled()
        return self.global_learner.state

    def _check_settled(self) -> None:
        self.wait()
        if self.lagging is not None and self.lagging != self.rank:
            raise BackendError(f"{self.who}: this replica of the global learner lags behind worker {self.lagging}'s; "
                               "every worker calls settle() before the global state is read")

    # --- the round ---------------------------------------------------------------------------------

    def wait(self) -> None:
        """Block until the round in flight is folded in; a clear error once no learner has made progress for
        timeout_s since the round was queued."""
        future, self.in_flight = self.in_flight, None
        if future is None:
            return
        deadline = self.in_flight_since + self.timeout_s
        told, seen = False, None
        while True:
            try:  # a round that is already done returns at once, however late this learner comes to it
                future.result(timeout=max(0.0, min(deadline - time.monotonic(), self.poll_s)))
                break
            except concurrent.futures.TimeoutError:
                if time.monotonic() >= deadline:
                    error = self._hung(self.in_flight_step)
                    abort_group(self.group)  # nothing stays blocked behind a collective that never ends
                    raise error from None
                if not told:  # before blocking longer: the coordinator must know where this learner is
                    self.arrivals.flush()
                    told = True
                now = self._progress()
                if seen is not None and now is not None and now != seen:
                    deadline = time.monotonic() + self.timeout_s  # someone moved: slow, not hung
                seen = now if now is not None else seen
            except RuntimeError as error:  # the collective broke: a peer's process or link is gone
                raise BackendError(f"{self.who}: the sync that ends at step {self.in_flight_step} failed "
                                   f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from error
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def _progress(self):
        try:
            return self.progress()
        except Exception:  # noqa: BLE001 - a heartbeat that cannot be read is no news, not an error
            return None

    def _serve(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # before any CUDA call of this thread: no context on GPU 0
        while True:
            job, future = self.jobs.get()
            try:
                self._run(job)
            except BaseException as error:  # noqa: BLE001 - handed to the learner's thread
                future.set_exception(error)
            else:
                future.set_result(None)

    def _run(self, job) -> None:
        emas, epoch, n_steps, ready = job
        work = self._catch_up if epoch is None else (lambda: self._fold(emas, epoch, n_steps))
        if self.stream is None:
            work()
            return
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            work()
        self.stream.synchronize()  # the thread's result means "on the device too", for the hang check

    def _fold(self, local: dict[int, torch.Tensor], epoch: int, n_steps: int) -> None:
        """The round's collective, then the same fold on every replica that needs it.

        While one learner alone carries weight (the anchor before mix_start) its worker's replica folds alone
        and moves nothing: the others only count the steps and fall behind (`lagging`). The anchor's global
        state is broadcast when someone needs it: the learners at a communication epoch, the first round where
        several learners carry weight, or a checkpoint or evaluation (`settle`). Every rank knows these moments
        from the plan, so all of them take part in that broadcast or none does."""
        weights, communicate = self.plan[epoch]
        carrying = [k for k, w in enumerate(weights) if w != 0]
        if len(carrying) == 1:
            (source,) = carrying
            owner = self.where[source][0]
            if self.lagging not in (None, owner):
                self._catch_up()  # another worker alone carried weight before: everyone starts from its state
            if owner == self.rank:
                self.global_learner.fold([local[k] if k == source else None for k in range(len(weights))],
                                         weights, n_steps)
            else:
                self.global_learner.ema_steps += n_steps  # the same counter as the source's replica
            self.lagging = owner
            if communicate:
                self._catch_up()
            return
        self._catch_up()
        self.global_learner.fold(self._gather(local, weights), weights, n_steps)

    def _gather(self, local: dict[int, torch.Tensor], weights: list[float]) -> list[torch.Tensor | None]:
        """Every carrying learner's EMA bytes on this device, in learner order: the local buffers themselves in
        a worker that holds every learner, else one all-gather of each worker's slots."""
        if self.world == 1:
            return [local[k] if w != 0 else None for k, w in enumerate(weights)]
        if self.shared is not None:  # each local EMA copied once, into its slot in shared memory
            gathered = self.shared.gather([local[k] for k in self.local])
        else:
            if self.send is None:
                (send,) = local.values()
            else:
                send = self.send
                for slot, k in enumerate(self.local):
                    send[slot].copy_(local[k])
            dist.all_gather_into_tensor(self.gathered.view(-1), send.view(-1), group=self.group)
            gathered = self.gathered
        emas = [gathered[self.where[k]] if w != 0 else None for k, w in enumerate(weights)]
        if self.staged:
            emas = [None if e is None else e.to(self.device, non_blocking=True) for e in emas]
        return emas

    def _catch_up(self) -> None:
        """If the replicas lag behind the one learner that carried weight, broadcast its global state."""
        if self.lagging is None:
            return
        if self.world == 1:  # the one replica is the one that folded
            self.lagging = None
            return
        buffer = self.global_learner.buffer
        wire = self.send.view(-1)[: buffer.numel()] if self.staged else buffer
        if self.staged:
            wire.copy_(buffer)
        dist.broadcast(wire, src=dist.get_global_rank(self.group, self.lagging) if self.group else self.lagging,
                       group=self.group)
        if self.staged:
            buffer.copy_(wire, non_blocking=True)
        self.lagging = None

    def settle(self) -> None:
        """Bring every replica up to date (a collective when they lag): called by every learner at the same
        points, before a checkpoint or an evaluation reads the global state."""
        self.wait()
        future = Future()
        self.jobs.put(((None, None, None, self._ready_event()), future))
        self.in_flight, self.in_flight_step, self.in_flight_since = future, self.step, time.monotonic()
        self.wait()

    def _hung(self, step: int) -> BackendError:
        missing = self.missing(step)
        who = f"learner(s) {missing} never arrived (hung or too slow)" if missing else \
            "the collective did not complete (a peer is hung or its link is down)"
        return BackendError(
            f"{self.who}: no learner made progress for {self.timeout_s:.0f} s (runtime.sync_timeout_s) "
            f"while it waited for the sync that ends at step {step}; {who}. Raise runtime.sync_timeout_s if a "
            "learner can go that long without finishing a step.")

    def close(self) -> None:
        """Finish the round in flight (the worker thread is a daemon and ends with the process)."""
        self.wait()
