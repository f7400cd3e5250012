"""The mixing data path on GPUs: the staged path (learners sharing a GPU, gloo) under the CUDA sanitizer, one CUDA
context per learner process, and with a GPU per learner the NCCL path: the same bits, and a hung learner named
in the error while the others exit cleanly. Plain processes, no Ray (collective_sync is Ray-free)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import free_port

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REPO = Path(__file__).resolve().parents[2]
# One learner process: mixes ROUNDS of seeded EMA buffers through a CollectiveSync on its device, then saves its
# replica of the global learner. argv: rank world port device backend out mode
WORKER = r'''
import os, sys, time, torch, torch.distributed as dist
from generalist.config import apply_overrides
from generalist.distributed.collective_sync import CollectiveSync
from generalist.distributed.mixing_group import new_mixing_group
from generalist.errors import BackendError
from generalist.mixing import GlobalLearner
from generalist.models import build_model
from generalist.recipes import get_recipe
rank, world, port, device, backend, out, mode = sys.argv[1:8]
rank, world = int(rank), int(world)
device = torch.device(device)
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
if device.type == "cuda":
    torch.cuda.set_device(device)
dist.init_process_group("gloo", rank=rank, world_size=world)
config = apply_overrides(get_recipe("generalist-d"), ["schedule.epochs=9", "mixing.redistribute_start=0.7",
                                                       "mixing.redistribute_every=1", "model.name=small-cnn"])
torch.manual_seed(0)
init = build_model("small-cnn", num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3).state_dict()
glob = GlobalLearner(config, init, device)
timeout = 5.0 if mode == "hang" else 120.0
sync = CollectiveSync(config, rank, glob, group=new_mixing_group(backend, device, timeout), timeout_s=timeout,
                      poll_s=0.25, missing=lambda step: [1])
print("ready", os.getpid(), flush=True)
try:
    for i, (epoch, n) in enumerate([(1, 1), (2, 3), (6, 1), (7, 2), (7, 1), (8, 1), (9, 4)]):
        if mode == "hang" and rank == 1 and i == 3:
            time.sleep(3600)
        g = torch.Generator().manual_seed(1000 * rank + i)
        state = {k: (v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 10 * rank + i)
                 for k, v in init.items()}
        loaded = sync.exchange(epoch, n, {rank: glob.layout.pack(state, device)})
    sync.settle()
    torch.save({"buffer": glob.buffer.cpu()}, out)
except BackendError as error:
    torch.save({"error": str(error)}, out)
    os._exit(0)
dist.destroy_process_group()
'''


def start(world: int, devices: list[str], backend: str, tmp_path: Path, mode: str = "normal",
          env: dict | None = None) -> list[subprocess.Popen]:
    port = str(free_port())
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return [subprocess.Popen([sys.executable, "-c", WORKER, str(r), str(world), port, devices[r], backend,
                              str(tmp_path / f"replica-{r}.pt"), mode], env=environment, stdout=subprocess.PIPE,
                             text=True) for r in range(world)]


def test_the_staged_path_of_learners_sharing_a_gpu_is_race_free_and_makes_one_context_each(tmp_path):
    """Two learners on one GPU mix over gloo through host copies (collective_sync's staged path) under
    TORCH_CUDA_SANITIZER=1, which fails on any unsynchronised access across streams; while they run, each
    process holds exactly one CUDA context (nvidia-smi lists every process once per context)."""
    procs = start(2, ["cuda:0", "cuda:0"], "gloo", tmp_path, env={"TORCH_CUDA_SANITIZER": "1"})
    pids = [int(p.stdout.readline().split()[1]) for p in procs]
    apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.splitlines()
    for pid in pids:
        contexts = [line for line in apps if line.split(",")[0].strip() == str(pid)]
        assert len(contexts) <= 1, f"learner process {pid} holds {len(contexts)} CUDA contexts: {contexts}"
    for p in procs:
        assert p.wait(timeout=300) == 0
    replicas = [torch.load(tmp_path / f"replica-{r}.pt") for r in range(2)]
    assert all("buffer" in r for r in replicas), replicas
    assert torch.equal(replicas[0]["buffer"], replicas[1]["buffer"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs a GPU per learner (2+ GPUs)")
def test_with_a_gpu_each_the_learners_mix_over_nccl_to_the_same_bits(tmp_path):
    procs = start(2, ["cuda:0", "cuda:1"], "nccl", tmp_path)
    for p in procs:
        assert p.wait(timeout=300) == 0
    replicas = [torch.load(tmp_path / f"replica-{r}.pt") for r in range(2)]
    assert torch.equal(replicas[0]["buffer"], replicas[1]["buffer"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs a GPU per learner (2+ GPUs)")
def test_a_stopped_learner_on_nccl_is_named_and_the_other_exits_cleanly(tmp_path):
    """SIGSTOP one learner mid-run: the other names it within the sync timeout (5 s), aborts the NCCL group and
    exits on its own, before NCCL's watchdog (its timeout is past ours) could kill it."""
    procs = start(2, ["cuda:0", "cuda:1"], "nccl", tmp_path, mode="hang")
    for p in procs:
        p.stdout.readline()
    time.sleep(1.0)
    os.kill(procs[1].pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert procs[0].wait(timeout=60) == 0
        assert time.monotonic() - started < 30
        error = torch.load(tmp_path / "replica-0.pt")["error"]
        assert "learner(s) [1] never arrived" in error
    finally:
        os.kill(procs[1].pid, signal.SIGKILL)
