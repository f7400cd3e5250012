"""The process group the learners mix through: its backend, decided once for the whole group, and its timeouts.

Three rules, each against a way the mixing could hang or die before our own error names the culprit:
- **One backend for the group.** Every learner reports its device at join; the coordinator decides once
  (`choose_backend`): NCCL when every learner has a CUDA device of its own, gloo when every learner is on a
  CPU or they share GPUs (NCCL refuses two ranks on one device). A group where some learners have a GPU and
  others do not (a node that shows a GPU without a usable driver) stops at join with one line naming who has
  what, instead of a group split between two backends until a timeout.
- **A group of its own** (`new_mixing_group`), never the worker group's default one: a barrier, a
  `torch.distributed.checkpoint` or DDP's first broadcast on the default group cannot interleave with the
  mixing's collectives, which one background thread issues (collective_sync).
- **Our deadline first.** The group's own timeout is set past ours (`group_timeout`), and for NCCL the
  watchdog's process kill is off for this group (TORCH_NCCL_ASYNC_ERROR_HANDLING=0 while it is made, as
  torch documents for `abort`), so a hung peer ends in our error naming the learners that never arrived,
  after which we abort the group (`abort_group`) so nothing stays blocked behind a kernel that never ends.
  NCCL groups are made with `device_id` (eager initialisation: a bad device fails at start, not mid-run)
  and with the flight recorder on (TORCH_FR_BUFFER_SIZE), whose records `torch.distributed` can dump.

Learners on the CPUs of one node (`on_one_node_cpus`) gather through /dev/shm instead of loopback TCP
(shared_memory_gather); the gloo group carries its barrier.

Only torch.distributed here, no Ray: tested with plain processes and mocks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from generalist.errors import BackendError, ConfigError

FLIGHT_RECORDER_ENTRIES = "2000"  # collectives the NCCL flight recorder keeps per group


@dataclass(frozen=True)
class LearnerDevice:
    """What a learner reports at join: where it trains."""

    rank: int
    node: str  # the node's id (IP or Ray node id): two learners on one node may share a GPU
    device: str  # "cpu" or "cuda:N"


def choose_backend(devices: list[LearnerDevice]) -> str:
    """nccl or gloo for the whole mixing group, from every learner's device; ConfigError on a mixed group."""
    kinds = {d.device.split(":")[0] for d in devices}
    if kinds == {"cpu"}:
        return "gloo"
    if kinds != {"cuda"}:
        where = ", ".join(f"learner {d.rank}: {d.device} on {d.node}" for d in sorted(devices, key=lambda d: d.rank))
        raise ConfigError(f"the learners do not all train on the same kind of device ({where}); a node shows a "
                           "GPU without a usable driver, or runtime.device=auto found none there: fix that node, "
                           "or set runtime.device=cpu for all")
    placed = [(d.node, d.device) for d in devices]
    return "nccl" if len(set(placed)) == len(placed) else "gloo"  # shared GPUs: NCCL refuses two ranks on one


def on_one_node_cpus(devices: list[LearnerDevice]) -> bool:
    """Whether the mixing can gather through shared memory (shared_memory_gather): every learner trains on a CPU
    of the same node."""
    return len({d.node for d in devices}) == 1 and all(d.device == "cpu" for d in devices)


def group_timeout(sync_timeout_s: float) -> timedelta:
    """The group's own timeout: past our deadline (twice it, and at least a minute more), so ours fires first."""
    return timedelta(seconds=sync_timeout_s + max(60.0, sync_timeout_s))


def new_mixing_group(backend: str, device: torch.device, sync_timeout_s: float) -> dist.ProcessGroup:
    """A new group over the whole worker group, for the mixing only. Every worker calls it, in the same order
    (it is itself a collective)."""
    timeout = group_timeout(sync_timeout_s)
    if backend == "gloo":
        return dist.new_group(backend="gloo", timeout=timeout)
    if backend != "nccl" or device.type != "cuda":
        raise BackendError(f"the mixing group's backend {backend!r} does not fit this learner's device {device}")
    saved = {k: os.environ.get(k) for k in ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_FR_BUFFER_SIZE")}
    os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "0"  # our deadline, then abort_group: no watchdog kill
    os.environ.setdefault("TORCH_FR_BUFFER_SIZE", FLIGHT_RECORDER_ENTRIES)
    try:
        return dist.new_group(backend="nccl", timeout=timeout, device_id=device)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def abort_group(group: dist.ProcessGroup | None) -> None:
    """Abort the mixing group after our deadline, so that no thread stays blocked in it. NCCL aborts its
    communicators; gloo has no abort (its collective ends at the group's timeout); best effort either way."""
    if group is None:
        return
    try:
        group.abort()
    except (RuntimeError, AttributeError, NotImplementedError):
        pass
