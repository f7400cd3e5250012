"""The mixing's all-gather for workers on one host: through shared memory instead of gloo's loopback TCP.

On CPUs gloo moves every learner's EMA through TCP on the loopback interface: for ResNet-18 and K = 2 that was
most of the 174 ms redistributing sync on the 2-core machine (the blocking round was 126 ms, the fold in it 17 ms:
benchmarks/results/sync_overhead.md). When every worker of the mixing group trains on the CPU of one node, the
gathered buffer is instead a file in /dev/shm that every worker maps: each writes its own part, the group passes
one barrier (a few bytes through gloo, under the group's timeout and our deadline like any collective), and
every worker folds the parts where they lie. The bytes are those an all-gather would have delivered, so the fold's
bits are too.

Two buffers alternate by round, so one barrier a round is enough: a worker writes into a buffer again two rounds
later, after the next round's barrier, which no worker passes before it has folded the round that read it.
The file is unlinked once every worker has mapped it, so nothing is left behind when a process dies. Where
/dev/shm is missing or too small (a container's default is 64 MiB), the group keeps gloo's all-gather.

Only torch.distributed here, no Ray: tested with plain processes (tests/unit/test_collective_sync.py).
"""

from __future__ import annotations

import os
import shutil
import uuid

import torch
import torch.distributed as dist

SHM = "/dev/shm"
HEADROOM_BYTES = 256 * 2**20  # left free in /dev/shm for everyone else (Ray's object store may live there too)


class SharedMemoryGather:
    """`gather(slots)` for the member `rank` of `group`: every member's slots (part = (slots, bytes)), as one
    tensor of shape (world, *part) that lies in shared memory. Made by `open_shared_gather`, collectively."""

    def __init__(self, group: dist.ProcessGroup | None, rank: int, buffers: torch.Tensor):
        self.group = group
        self.rank = rank
        self.buffers = buffers  # (2, world, *part)
        self.rounds = 0

    def gather(self, slots: list[torch.Tensor]) -> torch.Tensor:
        """Each of this member's buffers is copied once, straight into its slot of the shared buffer."""
        gathered = self.buffers[self.rounds % 2]
        self.rounds += 1
        for slot, buffer in enumerate(slots):
            gathered[self.rank, slot].copy_(buffer.view(-1))
        dist.barrier(group=self.group)  # every part written (and the round before this buffer's last read)
        return gathered


def open_shared_gather(group: dist.ProcessGroup | None, rank: int, world: int,
                       part: tuple[int, ...]) -> SharedMemoryGather | None:
    """Every member calls it, in the same order (it is itself a collective); None where /dev/shm cannot hold the
    two buffers, and then the caller all-gathers through the group."""
    nbytes = 2 * world * torch.Size(part).numel()
    path = None
    if rank == 0:
        if os.path.isdir(SHM) and shutil.disk_usage(SHM).free >= nbytes + HEADROOM_BYTES:
            path = os.path.join(SHM, f"generalist-mixing-{uuid.uuid4().hex}")
            with open(path, "wb") as file:
                os.ftruncate(file.fileno(), nbytes)
    decided = [path]
    dist.broadcast_object_list(decided, src=dist.get_global_rank(group, 0) if group else 0, group=group)
    (path,) = decided
    if path is None:
        return None
    try:
        buffers = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8).view(2, world, *part)
    finally:
        dist.barrier(group=group)  # every member has mapped it (one that could not raises after this)
        if rank == 0:
            os.unlink(path)
    return SharedMemoryGather(group, rank, buffers)
