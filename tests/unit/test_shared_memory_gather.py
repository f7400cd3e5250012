"""The mixing's gather through /dev/shm (generalist/distributed/shared_memory_gather.py) in one process: it
leaves no file behind, alternates its two buffers, and steps aside where /dev/shm is too small. (Two and three
processes fold through it bit for bit in tests/unit/test_collective_sync.py.)"""

from __future__ import annotations

import os
from collections import namedtuple

import pytest
import torch
import torch.distributed as dist

from generalist.distributed import shared_memory_gather
from generalist.distributed.shared_memory_gather import SHM, open_shared_gather

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM), reason="needs /dev/shm")


@pytest.fixture
def group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield dist.new_group(backend="gloo")
    dist.destroy_process_group()


def our_files() -> set[str]:
    return {name for name in os.listdir(SHM) if name.startswith("generalist-mixing-")}


def test_each_round_lands_in_shared_memory_in_alternate_buffers_and_no_file_is_left(group):
    before = our_files()
    gather = open_shared_gather(group, 0, 1, (2, 8))
    assert gather is not None
    assert our_files() == before, "the file must be unlinked once every member has mapped it"
    parts = [torch.arange(16, dtype=torch.uint8).view(2, 8) + r for r in range(3)]
    first = gather.gather(list(parts[0]))
    assert first.shape == (1, 2, 8) and torch.equal(first[0], parts[0])
    second = gather.gather(list(parts[1]))
    assert torch.equal(second[0], parts[1]) and torch.equal(first[0], parts[0])  # the other buffer
    third = gather.gather(list(parts[2]))
    assert third.data_ptr() == first.data_ptr() != second.data_ptr()  # two buffers, alternating
    assert torch.equal(third[0], parts[2]) and torch.equal(second[0], parts[1])


def test_where_dev_shm_is_too_small_the_group_keeps_its_all_gather(group, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shared_memory_gather.shutil, "disk_usage", lambda path: usage(64 << 20, 0, 64 << 20))
    assert open_shared_gather(group, 0, 1, (1, 1 << 20)) is None
