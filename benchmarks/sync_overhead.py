"""A learner's stall per sync, the old object-store path against the collective path, in one run.

Claim measured: how long a base learner stands still at each sync, from the end of its last step to the
start of its next, separately for plain syncs (outside communication epochs: the global learner is updated
but nobody loads it) and redistributing syncs (communication epochs: every learner loads the global state
before its next step). Goals (issue "Mixing on the devices"): on a 2-core CPU machine, ResNet-18 at K = 2,
plain stall <= 5 ms and redistributing stall <= 50 ms; on a GPU, ResNet-18 at K = 2 a round <= 2 ms and the
plain stall <= 1% of a step.

- `object store` (the path before this change, rebuilt here as it was, as the baseline): each learner puts
  its packed EMA into the object store for a coordinator actor, which gathers the K states on its CPU,
  folds them into the global learner and, in a communication epoch, puts the result once for every
  learner to copy into its model. The learner waits for the whole round at every sync.
- `collective` (generalist/distributed/collective_sync.py, what the Ray backend runs): the learners are a
  Ray Train worker group; their packed EMAs move through the group's process group (NCCL between GPUs of
  their own, gloo otherwise) into a replica of the global learner on each; a plain sync returns at once and
  the collective and the fold run while the learner trains its next step.

Between syncs each learner does one "step": a real training step of the recipe's learner (`--step real`:
Learner.run_steps on random data of the real shapes) or a fixed amount of busy compute (`--step busy`, the
default on a CPU machine where a real ResNet-18 PGD step takes tens of seconds: as many matmul iterations as
take `--step-ms` on one idle thread, counted once before the learners start). Fixed work, not a fixed time: CPU
that the background fold takes from a learner shows up as a longer step. `round` is the time one sync takes
when its result is waited for at once (a blocking round, measured separately): the cost the background work
hides. `throughput vs no sync` is the slowest learner's time for the same number of steps without any sync
(all learners stepping at once, the same load) over its time for steps with their plain syncs: what mixing
costs the whole group, the stall and the stolen CPU together (collective path only). On a GPU a learner waits
for its own stream only (the stall includes what the sync put in its way, not the side stream's work). Medians
and the 90th percentile over `--rounds` rounds after 2 warm-up rounds, slowest learner per round; one run.
A learner's stall also holds its wait for a peer whose step ended later, which no sync can remove; `after the
last arrival` is the part that is the sync's own: per round, from the end of the last learner's step to the
moment the last learner resumed; a line after the table says where it goes (the gather, the fold, the load into
the model), timed on that learner around the sync's own methods.

    python benchmarks/sync_overhead.py [--models small-cnn resnet18 wrn-34-10] [--learners 2 3] [--rounds 20]
                                       [--device cpu|cuda] [--step real | --step-ms 1000] [--paths ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
import torch  # noqa: E402
from ray import train as ray_train  # noqa: E402
from ray.train import RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchConfig, TorchTrainer  # noqa: E402

from generalist.config import RunConfig as GeneralistConfig  # noqa: E402
from generalist.config import apply_overrides  # noqa: E402
from generalist.data import TensorData, TrainStream  # noqa: E402
from generalist.distributed.collective_sync import CollectiveSync  # noqa: E402
from generalist.distributed.coordinator import Coordinator  # noqa: E402
from generalist.distributed.mixing_group import new_mixing_group  # noqa: E402
from generalist.distributed.ray_backend import ThrottledArrivals  # noqa: E402
from generalist.learner import Learner  # noqa: E402
from generalist.mixing import GlobalLearner, is_communication_epoch, mixing_weights  # noqa: E402
from generalist.models import build_model  # noqa: E402
from generalist.recipes import get_recipe  # noqa: E402

MODEL_KWARGS = {"num_classes": 10, "in_channels": 3, "mean": (0.5,) * 3, "std": (0.25,) * 3}
WARMUP = 2


def bench_config(model_name: str, k: int, device: str, batch_size: int) -> GeneralistConfig:
    recipe = {2: "generalist-d", 3: "generalist-t"}[k]
    gpus = 0 if device == "cpu" else (1 if torch.cuda.device_count() >= k else round(1 / k - 0.005, 2))
    return apply_overrides(get_recipe(recipe), [f"model.name={model_name}", f"data.batch_size={batch_size}",
                                                f"runtime.device={device}", f"runtime.gpus_per_learner={gpus}",
                                                "runtime.threads_per_learner=1", "runtime.deterministic=false"])


def epochs_of(config: GeneralistConfig) -> dict[str, int]:
    """An epoch of each kind of sync, in the mixing phase (every learner carries weight, so every state moves):
    plain (not a communication epoch) and redistributing (a communication epoch)."""
    mixing = [e for e in range(1, config.schedule.epochs + 1) if all(mixing_weights(e, config))]
    plain = next(e for e in mixing if not is_communication_epoch(e, config))
    redistributing = next(e for e in mixing if is_communication_epoch(e, config))
    return {"plain": plain, "redistributing": redistributing}


def busy_iterations(step_ms: float) -> int:
    """How many iterations of Stepper's busy compute take `step_ms` on one idle thread (measured once, before
    any learner starts): the busy step is then a fixed amount of work, so CPU that the background fold takes
    from a learner shows up as a longer step instead of being hidden by a fixed wall time."""
    torch.set_num_threads(1)
    scratch = torch.randn(256, 256)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 0.5:
        scratch = torch.tanh(scratch @ scratch * 1e-3)
        n += 1
    return max(1, round(n * step_ms / 1000 / (time.perf_counter() - start)))


class Stepper:
    """One learner's "step" between syncs: a real training step, or a fixed amount of busy compute."""

    def __init__(self, config: GeneralistConfig, rank: int, device: torch.device, step_work: int | None):
        self.step_work = step_work
        self.device = device
        generator = torch.Generator().manual_seed(rank)
        data = TensorData(torch.randint(0, 256, (4 * config.data.batch_size, 3, 32, 32), dtype=torch.uint8,
                                        generator=generator),
                          torch.randint(0, 10, (4 * config.data.batch_size,), generator=generator))
        stream = TrainStream(data, batch_size=config.data.batch_size, seed=0, augment=True)
        init = build_model(config.model.name, **MODEL_KWARGS).state_dict()
        self.learner = Learner(config, rank, init, stream, MODEL_KWARGS, device)
        self.scratch = torch.randn(256, 256, device=device)
        self.calls = 0

    def step(self, epoch: int) -> float:
        start = time.perf_counter()
        if self.step_work is None:
            self.learner.run_steps(epoch, self.calls % self.learner.stream.steps_per_epoch, 1)  # ends in a host sync
        else:
            for _ in range(self.step_work):
                self.scratch = torch.tanh(self.scratch @ self.scratch * 1e-3)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
        self.calls += 1
        return time.perf_counter() - start


def summary(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return 1000 * statistics.median(ordered), 1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


# --- the collective path: the Ray backend's own CollectiveSync inside a Ray Train worker group ------------


class RoundClock:
    """When the parts of this worker's round began and ended (perf_counter): the gather of the learners' EMAs
    (the copy into shared memory and the barrier, or the all-gather) and the fold. It wraps the sync's own
    methods, so it times the very code the Ray backend runs, at the cost of two clock reads a part."""

    def __init__(self, sync: CollectiveSync):
        self.marks: dict[str, tuple[float, float]] = {}
        sync._gather = self.timed("gather", sync._gather)
        sync.global_learner.fold = self.timed("fold", sync.global_learner.fold)

    def timed(self, part: str, method: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = method(*args, **kwargs)
            self.marks[part] = (start, time.perf_counter())
            return result
        return wrapper

    def take(self) -> dict[str, tuple[float, float]]:
        marks, self.marks = self.marks, {}
        return marks


def collective_worker(spec: dict) -> None:
    config = GeneralistConfig.from_dict(spec["config"])
    rank = ray_train.get_context().get_world_rank()
    torch.set_num_threads(1)
    device = ray_train.torch.get_device() if spec["device"] == "cuda" else torch.device("cpu")
    coordinator = ray.get_actor(spec["coordinator"])
    stepper = Stepper(config, rank, device, spec["step_work"])
    init = build_model(config.model.name, **MODEL_KWARGS).state_dict()
    global_learner = GlobalLearner(config, init, device)
    joined = ray.get(coordinator.join.remote(rank, os.getpid(), [], 0, ray.get_runtime_context().get_node_id(),
                                             str(device)))
    sync = CollectiveSync(config, rank, global_learner, group=new_mixing_group(joined["mixing_backend"], device, 600),
                          timeout_s=600, plan=joined["plan"], arrivals=ThrottledArrivals(coordinator, rank),
                          missing=lambda step: ray.get(coordinator.missing.remote(step)),
                          shared_memory=joined["shared_memory"] and spec["shared_memory"])
    transport = "shared memory" if sync.shared is not None else joined["mixing_backend"]
    clock = RoundClock(sync)
    rows = []
    for kind, epoch in epochs_of(config).items():
        # The same steps without syncs, every learner at once (the same load): what the group would train at
        # with no mixing at all. Throughput = these steps' time / the time of steps with their syncs.
        for r in range(WARMUP + spec["rounds"]):
            step_s = stepper.step(epoch)
            if r >= WARMUP:
                rows.append({"rank": rank, "kind": kind + " alone", "round": r, "step_s": step_s})
        for r in range(WARMUP + spec["rounds"]):
            step_s = stepper.step(epoch)
            start = time.perf_counter()
            behind = sync.in_flight is not None and not sync.in_flight.done()  # the round before still running
            sync.wait()  # what exchange() does first; timed apart, so that the stall can be split
            waited = time.perf_counter() - start
            clock.take()  # the round before's marks: this round's are read after it
            loaded = sync.exchange(epoch, 1, {rank: stepper.learner.ema_buffer})
            handed_back = time.perf_counter()
            if loaded is not None:
                stepper.learner.load_global_(loaded)
            if device.type == "cuda":  # this learner's own stream: its next step waits for nothing else
                torch.cuda.current_stream(device).synchronize()
            stall = time.perf_counter() - start
            if r >= WARMUP:
                rows.append({"rank": rank, "kind": kind, "round": r, "stall_s": stall, "step_s": step_s,
                             "arrived": start, "behind": behind, "waited_s": waited, "transport": transport,
                             **({"marks": clock.take(), "handed_back": handed_back} if loaded is not None else {})})
        for r in range(WARMUP + spec["rounds"]):  # blocking rounds: the cost the background work hides
            start = time.perf_counter()
            sync.exchange(epoch, 1, {rank: stepper.learner.ema_buffer})
            sync.wait()
            if device.type == "cuda":
                torch.cuda.current_stream(device).synchronize()
            if r >= WARMUP:
                rows.append({"rank": rank, "kind": kind + " round", "round": r, "stall_s": time.perf_counter() - start})
    sync.close()
    ray.get(coordinator.report_rows.remote("bench", rows))


def measure_collective(config: GeneralistConfig, device: str, rounds: int, step_work: int | None,
                       shared_memory: bool = True) -> list[dict]:
    k = len(config.learners)
    name = f"bench-coordinator-{time.time_ns()}"
    coordinator = Coordinator.options(name=name).remote(config)
    runtime = config.runtime
    resources = {"CPU": 1, **({"GPU": runtime.gpus_per_learner} if device == "cuda" else {})}
    with tempfile.TemporaryDirectory() as storage:
        TorchTrainer(collective_worker,
                     train_loop_config={"config": config.to_dict(), "coordinator": name, "device": device,
                                        "rounds": rounds, "step_work": step_work, "shared_memory": shared_memory},
                     torch_config=TorchConfig(backend="gloo"),
                     scaling_config=ScalingConfig(num_workers=k, use_gpu=device == "cuda",
                                                  resources_per_worker=resources),
                     run_config=RunConfig(name="sync-bench", storage_path=storage)).fit()
    rows = [row for table, row in ray.get(coordinator.drain.remote())["rows"] if table == "bench"]
    ray.kill(coordinator)
    return rows


# --- the object-store path, as it was before the collective path (the baseline) ---------------------------


@ray.remote(num_cpus=0)
class ObjectStoreCoordinator:
    """The old coordinator's data path: gather K packed EMAs, fold on the CPU, put the result once."""

    def __init__(self, config: GeneralistConfig, init: dict):
        self.global_learner = GlobalLearner(config, init)
        self.config = config
        self.k = len(config.learners)
        self.pending: dict[int, torch.Tensor] = {}
        self.result = None

    async def exchange(self, rank: int, epoch: int, n_steps: int, ema) -> list | None:
        import asyncio

        if self.result is None or self.result.done():
            self.result = asyncio.get_running_loop().create_future()
        result = self.result
        self.pending[rank] = torch.from_numpy(ema)
        if len(self.pending) == self.k:
            emas, self.pending = [self.pending[k] for k in range(self.k)], {}
            redistribute = self.global_learner.sync(emas, epoch, n_steps)
            result.set_result(ray.put(self.global_learner.buffer.numpy()) if redistribute else None)
        ref = await result
        return None if ref is None else [ref]


@ray.remote(num_cpus=1)
class ObjectStoreLearner:
    def __init__(self, config: GeneralistConfig, rank: int, device: str, step_work: int | None):
        torch.set_num_threads(1)
        self.rank = rank
        self.stepper = Stepper(config, rank, torch.device(device), step_work)
        self.layout = self.stepper.learner.ema_layout

    def round(self, coordinator, epoch: int) -> dict:
        step_s = self.stepper.step(epoch)
        start = time.perf_counter()
        ema = self.stepper.learner.ema_buffer.cpu().numpy()  # device to host, then into the object store
        wrapped = ray.get(coordinator.exchange.remote(self.rank, epoch, 1, ema))
        if wrapped is not None:
            with warnings.catch_warnings():  # the object store's zero-copy array is read-only; it is only read
                warnings.simplefilter("ignore", UserWarning)
                buffer = torch.from_numpy(ray.get(wrapped[0])).to(self.stepper.device)
            self.stepper.learner.load_global_(self.layout.views(buffer))
        if self.stepper.device.type == "cuda":
            torch.cuda.current_stream(self.stepper.device).synchronize()
        return {"stall_s": time.perf_counter() - start, "step_s": step_s, "arrived": start}


def measure_object_store(config: GeneralistConfig, device: str, rounds: int, step_work: int | None) -> list[dict]:
    init = build_model(config.model.name, **MODEL_KWARGS).state_dict()
    k = len(config.learners)
    coordinator = ObjectStoreCoordinator.remote(config, init)
    gpus = config.runtime.gpus_per_learner if device == "cuda" else 0
    learners = [ObjectStoreLearner.options(num_gpus=gpus).remote(config, r, device, step_work) for r in range(k)]
    rows = []
    for kind, epoch in epochs_of(config).items():
        for r in range(WARMUP + rounds):
            results = ray.get([learner.round.remote(coordinator, epoch) for learner in learners])
            if r >= WARMUP:
                rows += [{"rank": rank, "kind": kind, "round": r, **res} for rank, res in enumerate(results)]
    for actor in [coordinator, *learners]:
        ray.kill(actor)
    return rows


def per_round_max(rows: list[dict], kind: str, value: Callable[[dict], float]) -> dict[int, float]:
    """round -> the largest `value` over the learners' rows of `kind` in that round."""
    most: dict[int, float] = {}
    for row in rows:
        if row["kind"] == kind:
            most[row["round"]] = max(most.get(row["round"], float("-inf")), value(row))
    return most


def after_last_arrival(rows: list[dict], kind: str) -> list[float]:
    """Per round of `kind`, from the moment the last learner ended its step to the moment the last one resumed:
    the sync's own stall, without the wait for a peer whose step ended later (perf_counter is the host's monotonic
    clock, one clock for every process of this one-node benchmark)."""
    arrived = per_round_max(rows, kind, lambda row: row["arrived"])
    resumed = per_round_max(rows, kind, lambda row: row["arrived"] + row["stall_s"])
    return [resumed[r] - arrived[r] for r in sorted(arrived)]


def stall_parts(label: str, rows: list[dict]) -> str:
    """Where a learner's stall goes (collective path): waiting for the round before it (the previous sync's
    background work), and the rest (this sync's own work, and at a redistributing sync its round and the load)."""
    if not any("waited_s" in row for row in rows):
        return f"# {label}: no split (object-store path)"
    cells = []
    for kind in ("plain", "redistributing"):
        mine = [row for row in rows if row["kind"] == kind]
        waited = statistics.median(1000 * row["waited_s"] for row in mine)
        rest = statistics.median(1000 * (row["stall_s"] - row["waited_s"]) for row in mine)
        behind = sum(row["behind"] for row in mine)
        cells.append(f"{kind}: the round before still running at {behind} of {len(mine)} syncs, waiting for it "
                     f"{waited:.2f} ms median, the rest {rest:.2f} ms median")
    return f"# {label}, every learner's syncs: " + "; ".join(cells)


def last_arrival_parts(label: str, rows: list[dict]) -> str:
    """Where the sync's own stall goes: for the last learner to end its step in each redistributing round, the
    median time from that moment to the start and end of its gather, the end of its fold, the global state handed
    back to it, and the end of the load into its model (its resume)."""
    last: dict[int, dict] = {}
    for row in rows:
        if row["kind"] == "redistributing" and "marks" in row:
            if row["round"] not in last or row["arrived"] > last[row["round"]]["arrived"]:
                last[row["round"]] = row
    if not last:
        return f"# {label}: no parts (object-store path)"
    points = {"gather began": lambda row: row["marks"]["gather"][0],
              "gather ended": lambda row: row["marks"]["gather"][1],
              "fold ended": lambda row: row["marks"]["fold"][1],
              "state handed back": lambda row: row["handed_back"],
              "loaded (resumed)": lambda row: row["arrived"] + row["stall_s"]}
    cells = [f"{name} {statistics.median(1000 * (at(row) - row['arrived']) for row in last.values()):.1f}"
             for name, at in points.items()]
    return (f"# {label}, the last learner to arrive at a redistributing sync, median ms after its arrival: "
            + ", ".join(cells))


def table_row(path: str, model: str, k: int, rows: list[dict], size_mib: float) -> str:
    def slowest(kind: str) -> list[float]:
        return list(per_round_max(rows, kind, lambda row: row["stall_s"]).values())

    steps = [row["step_s"] for row in rows if "step_s" in row and row["kind"] in ("plain", "redistributing")]
    step_ms = 1000 * statistics.median(steps)
    cells = []
    for kind in ("plain", "redistributing"):
        median, p90 = summary(slowest(kind))
        cells.append(f"{median:.2f} ({p90:.2f})")
    own = "{:.2f} ({:.2f})".format(*summary(after_last_arrival(rows, "redistributing")))
    plain_median = summary(slowest("plain"))[0]
    rounds = [f"{summary(slowest(kind + ' round'))[0]:.1f}" if slowest(kind + " round") else "= stall"
              for kind in ("plain", "redistributing")]

    def slowest_total(kind: str, with_stall: bool) -> float:
        """The slowest learner's summed time over the kind's rounds: steps, plus stalls when it synced."""
        totals: dict[int, float] = {}
        for row in rows:
            if row["kind"] == kind:
                totals[row["rank"]] = totals.get(row["rank"], 0.0) + row["step_s"] + (row["stall_s"] if with_stall
                                                                                         else 0.0)
        return max(totals.values()) if totals else float("nan")

    alone = slowest_total("plain alone", False)
    throughput = f"{alone / slowest_total('plain', True):.3f}" if alone == alone else "-"
    return (f"| {path} | {model} | {k} | {size_mib:.1f} | {step_ms:.0f} | {cells[0]} | {cells[1]} | {own} | "
            f"{100 * plain_median / step_ms:.2f} | {rounds[0]} / {rounds[1]} | {throughput} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small-cnn", "resnet18", "wrn-34-10"])
    parser.add_argument("--learners", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--step", choices=["real", "busy"], default=None,
                        help="real: the recipe's training step; busy: --step-ms of compute (default: real on "
                             "cuda, busy on cpu)")
    parser.add_argument("--step-ms", type=float, default=1000.0,
                        help="a busy step's length on one idle thread: its work is fixed from this at start")
    parser.add_argument("--batch-size", type=int, default=128, help="batch of a real step")
    parser.add_argument("--paths", nargs="+", default=["object store", "collective"],
                        choices=["object store", "collective"])
    parser.add_argument("--no-shared-memory", action="store_true",
                        help="the collective path all-gathers through gloo even where the learners share a node's "
                             "CPUs (the path before shared_memory_gather)")
    args = parser.parse_args()
    step_kind = args.step or ("real" if args.device == "cuda" else "busy")
    step_work = None if step_kind == "real" else busy_iterations(args.step_ms)
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    ray.init(num_cpus=max(4, 2 * max(args.learners)), num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", logging_level="error")
    hardware = (f"{torch.cuda.get_device_name(0)} x{gpus}" if args.device == "cuda" else "no GPU used")
    print(f"# sync_overhead: {platform.machine()} {os.cpu_count()} CPUs, {hardware}; ray {ray.__version__}, "
          f"torch {torch.__version__}; step: {'real training step, batch ' + str(args.batch_size) if step_work is None else f'{step_work} iterations of busy compute (fixed work, {args.step_ms:.0f} ms on an idle thread)'}; "
          f"{args.rounds} rounds after {WARMUP} warm-up, slowest learner per round; one run", flush=True)
    print("| path | model | K | state (MiB) | step (ms) | plain stall, median (p90) ms | "
          "redistributing stall, median (p90) ms | redistributing, after the last arrival, median (p90) ms | "
          "plain stall / step (%) | blocking round ms, plain / redistr. | throughput vs no sync |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    parts = []
    for model_name in args.models:
        for k in args.learners:
            config = bench_config(model_name, k, args.device, args.batch_size)
            size = sum(t.numel() * t.element_size()
                       for t in build_model(model_name, **MODEL_KWARGS).state_dict().values()) / 2**20
            for path in args.paths:
                if path == "object store":
                    rows = measure_object_store(config, args.device, args.rounds, step_work)
                    label = path
                else:
                    rows = measure_collective(config, args.device, args.rounds, step_work,
                                              shared_memory=not args.no_shared_memory)
                    label = f"collective ({next(r['transport'] for r in rows if 'transport' in r)})"
                print(table_row(label, model_name, k, rows, size), flush=True)
                parts.append(stall_parts(f"{label}, {model_name}, K = {k}", rows))
                parts.append(last_arrival_parts(f"{label}, {model_name}, K = {k}", rows))
    for line in parts:
        print(line)
    ray.shutdown()


if __name__ == "__main__":
    main()
