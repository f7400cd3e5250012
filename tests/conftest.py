"""Shared fixtures: where the real datasets are, and small configs that train in seconds."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_script(path: Path, name: str):
    """A script that is not a package module (benchmarks/, jobs/), imported from its file under `name`. Its folder
    goes on sys.path first, so that it imports its neighbours (protocol.py imports tables.py), and the module is
    registered before it runs (dataclasses look their module up while the class is built)."""
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def find_test_data_root() -> Path:
    """The offline datasets: $GENERALIST_TEST_DATA, else the shared folder beside the checkout."""
    root = Path(os.environ.get("GENERALIST_TEST_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.fail(f"test datasets not found at {root}; set GENERALIST_TEST_DATA to a folder with CIFAR-10/MNIST")
    return root


@pytest.fixture(scope="session")
def data_root() -> Path:
    return find_test_data_root()


@pytest.fixture(autouse=True, scope="session")
def _dataset_cache(tmp_path_factory):
    """Decoded datasets are cached per test session, never in the user's cache."""
    if "GENERALIST_CACHE" not in os.environ:
        os.environ["GENERALIST_CACHE"] = str(tmp_path_factory.mktemp("dataset-cache"))
    yield


TINY = [
    "data.train_subset=640", "data.val_size=200", "data.batch_size=64", "eval.n_examples=50", "eval.pgd_steps=3",
    "schedule.epochs=3", "runtime.backend=local", "runtime.threads_per_learner=1", "mixing.redistribute_every=1",
    # Rounds and communication on data epochs, statistics interpolated: the tests that count rounds, epochs and
    # redistributions read them so. The step clock and re-estimated statistics have their own tests
    # (test_clock.py, test_bn_stats.py), resume and both backends included.
    "schedule.clock_epochs=null", "mixing.global_bn=interpolate",
]


def tiny_config(recipe: str = "generalist-d-small", *overrides: str, data_root: Path | None = None):
    """A recipe shrunk to seconds: 10 steps an epoch, 3 epochs, PGD-3 in training, 50 validation points."""
    from generalist.config import apply_overrides
    from generalist.recipes import get_recipe

    config = get_recipe(recipe)
    attack_steps = [f"learners.{k}.attack.steps=3" for k, l in enumerate(config.learners) if l.attack is not None]
    root = f'data.root="{data_root or find_test_data_root()}"'
    # A machine that holds only MNIST (a GPU box the 130 MB of CIFAR-10 cannot travel to) runs the same tests on it.
    dataset = [f"data.dataset={os.environ['GENERALIST_TEST_DATASET']}"] if os.environ.get("GENERALIST_TEST_DATASET") \
        else []
    return apply_overrides(config, TINY + attack_steps + [root, *dataset, *overrides])


@pytest.fixture
def tiny():
    return tiny_config


# --- a real local Ray for tests/ray: 127.0.0.1 only, 4 logical CPUs and 3 logical GPUs ---------------
# (one conftest for the whole suite: test modules import helpers from it as `conftest`)

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def local_ray():
    import ray

    # Logical GPUs let placement be tested on a CPU machine: Ray hands out ids, no CUDA is touched.
    ray.init(num_cpus=4, num_gpus=3, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             logging_level="error")
    yield ray
    ray.shutdown()


# --- a real `ray start --head` (tests/ray/test_driver_and_jobs.py, test_deploy_jobs.py) -----------------

RAY_BIN = Path(sys.executable).parent / "ray"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now. A head node given fixed ports, or Ray's default ones (the dashboard agent's
    52365), cannot start its job agent while another Ray on this machine holds them: the other test process's
    local Ray, under `make test`'s two processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head_node_ports() -> tuple[int, list[str]]:
    """The dashboard port and the `ray start --head` flags that give every listening port of the head a free one."""
    dashboard = free_port()
    return dashboard, [f"--port={free_port()}", f"--dashboard-port={dashboard}",
                       f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}"]


def wait_for_job_agent(address: str, env: dict, *, deadline_s: float = 600.0, head=None) -> None:
    """Return once the head at `address` runs jobs: a no-op job is submitted until one succeeds.

    A fresh head's job agent registers some time after `ray start` returns; on a loaded machine that took
    longer than any fixed number of quick retries, so this polls against a deadline of minutes instead. `head`
    (a Popen of `ray start --block`) ends the wait early if it exits."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            probe = subprocess.run([str(RAY_BIN), "job", "submit", "--address", address, "--", "true"], env=env,
                                   capture_output=True, text=True, timeout=max(10.0, deadline - time.monotonic()))
            if probe.returncode == 0:
                return
            last = (probe.stdout + probe.stderr)[-2000:]
        except subprocess.TimeoutExpired:
            last = "the probe job did not finish before the deadline"
        if time.monotonic() > deadline or (head is not None and head.poll() is not None):
            pytest.fail(f"the Ray head at {address} did not run a job within {deadline_s:.0f} s: {last}")
        time.sleep(3)


def processes_of(marker: str) -> list[int]:
    """Every process (but this one) whose command line holds `marker`, such as a head node's temp dir."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def stop_processes_of(marker: str) -> None:
    """Stop a head node's processes: every process whose command line names its temp dir. Not `ray stop`,
    which would also stop every other Ray on this machine (other tests', other users'). SIGTERM has 5 s: in the
    two runs timed, one of the head's processes outlived 15 s of it (the teardown took 15.4 and 15.6 s)."""
    for sig, grace_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 15)):
        for pid in processes_of(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while processes_of(marker) and time.monotonic() < deadline:
            time.sleep(0.3)
    assert not processes_of(marker), "the head node left processes behind"


# --- helpers of the Ray backend's tests (imported by test modules as `from conftest import ...`) ----------


def final_global(run_dir) -> dict:
    from generalist.checkpoint import load_state_dict_file as _load_state_dict_file

    return _load_state_dict_file(run_dir / "final" / "global.pt")


def assert_same_tensors(a: dict, b: dict) -> None:
    import torch

    assert set(a) == set(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"differ: {differ[:5]}"


def coordinator_handle(ray, since_ns: int = 0, deadline_s: float = 600.0):
    """The newest run's coordinator, created after `since_ns` (its name ends in its creation time); waits for it
    up to `deadline_s` (a deadline, not a count of polls: each listing is slower on a loaded machine)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith("generalist-coordinator-") and int(a["name"].split("-")[-1]) > since_ns]
        if names:
            namespace = ray.get_runtime_context().namespace
            return ray.get_actor(sorted(names)[-1], namespace=namespace)
        time.sleep(0.1)
    raise AssertionError("no coordinator actor appeared")


def read_jsonl(path) -> list[dict]:
    import json

    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _coordinator_status(ray, coordinator) -> dict | None:
    try:
        return ray.get(coordinator.status.remote(), timeout=20)
    except Exception:  # noqa: BLE001 - restarting, or the run is over
        return None


def fault_injector(ray, plan: list[tuple[int, int | str]], since_ns: int, events: list,
                   deadline_s: float = 900.0) -> threading.Thread:
    """A thread that SIGKILLs, in order, each `(step, target)` of `plan` once the running group has reached that
    global step; the target is a learner's rank or "coordinator". After each kill it waits until the run has
    recovered (a new group joined, after a new coordinator if that one died) before the next, so every kill
    lands in a running group. Each kill is a dict in `events`, with "recovered_s" once recovered."""

    def run():
        coordinator = coordinator_handle(ray, since_ns)
        deadline = time.monotonic() + deadline_s
        for step, target in plan:
            while time.monotonic() < deadline:  # wait for the step, in a running (joined) group
                status = _coordinator_status(ray, coordinator)
                if status is not None and status["joins"] >= 1 and status["global_step"] >= step:
                    break
                time.sleep(0.05)
            else:
                return
            if target == "coordinator":
                pid = status["pid"]
            else:
                pid = ray.get(coordinator.learners.remote(), timeout=20).get(target, {}).get("pid")
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGKILL)  # a real process death, as from the OOM killer
            except ProcessLookupError:
                continue
            events.append({"target": target, "step": status["global_step"], "at": time.monotonic(),
                           "incarnation": status["incarnation"], "joins": status["joins"]})
            while time.monotonic() < deadline:
                after = _coordinator_status(ray, coordinator)
                if after is not None and (after["incarnation"] != status["incarnation"] and after["joins"] >= 1
                                          or after["incarnation"] == status["incarnation"]
                                          and after["joins"] > status["joins"]):
                    events[-1]["recovered_s"] = time.monotonic() - events[-1]["at"]
                    break
                time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
