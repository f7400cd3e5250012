"""The Ray backend: Ray Train workers that hold the base learners, plus our coordinator actor.

Ray Train gives us the learner actors (`TorchTrainer` worker group: world rank r runs the learners of group r,
one learner each unless learners share a GPU: placement.resolve_grouping), their placement (`ScalingConfig`: a
GPU each, PACK or SPREAD), restarts of the group from the last reported checkpoint (`FailureConfig`) and
checkpoint storage (`RunConfig.storage_path`, local or any pyarrow URI). The workers mix through a process
group of their own (NCCL on GPUs, gloo on CPUs), each holding a replica of the global learner
(CollectiveSync); we add the coordinator as the control plane (membership, mixing plan, hung learners,
metrics) and run the same `train_learners` loop as the in-process backend, so the numbers are the same.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import ray
import torch
from ray import train as ray_train
from ray.train import Checkpoint, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig
from ray.train.v2._internal.exceptions import BroadcastCollectiveTimeoutError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from generalist import checkpoint as ckpt
from generalist.config import RunConfig as GeneralistConfig
from generalist.data import resolve_data_root
from generalist.distributed.abortable_trainer import AbortableTorchTrainer
from generalist.distributed.collective_sync import CollectiveSync
from generalist.distributed.coordinator import Coordinator
from generalist.distributed.local import build_learners, finish
from generalist.distributed.mixing_group import new_mixing_group
from generalist.distributed.placement import (config_groups, resolve_gpus, resolve_grouping, with_gpus,
                                              with_grouping, worker_resources)
from generalist.distributed.ray_start import start_local_ray
from generalist.errors import (BackendError, CheckpointError, ConfigError, DataError, GeneralistError,
                               TrainingDiverged)
from generalist.mixing import GlobalLearner
from generalist.records import (GLOBAL, EpochResult, RoundStats, accuracy_fields, checkpoint_state, epoch_rows,
                                round_rows)
from generalist.repro import set_determinism
from generalist.run_folder import BestTracker, FolderSink, Resume, RunFolder, load_resume_payloads
from generalist.storage import Location, locate
from generalist.training import prepare_run_data, train_learners

# Keep a local Ray on the loopback interface (see INSTALL notes in the README).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


class CoordinatorRestarted(RuntimeError):
    """Raised in a learner whose coordinator came back as a new incarnation: a process failure like a dead
    learner (not a GeneralistError), so Ray Train restarts the group from the last checkpoint."""


# Errors that a restart would only repeat: the run ends at once instead of being retried.
DETERMINISTIC_ERRORS = (TrainingDiverged, ConfigError, DataError, CheckpointError)


class WorkerSink:
    """A learner actor's metrics go to the coordinator (the driver writes them); checkpoints to Ray Train."""

    FLUSH_EVERY_S = 0.5  # round rows go out in batches: one message per round would sit in the sync's path

    def __init__(self, config: GeneralistConfig, rank: int, coordinator, run_dir: Location | None, best_score,
                 incarnation: int):
        self.config = config
        self.rank = rank
        self.coordinator = coordinator
        self.incarnation = incarnation
        # Rank 0 keeps checkpoints/best in the run folder (a path on this node, or shared storage).
        self.best = BestTracker(config, RunFolder(run_dir), best_score) if rank == 0 and run_dir else None
        self.pending: list[dict] = []
        self.last_flush = time.monotonic()

    def on_round(self, epoch, global_step, stats: list[RoundStats], weights, redistributed, sync_seconds) -> None:
        self.pending += round_rows(self.config, epoch, global_step, stats, weights, redistributed, sync_seconds)
        if time.monotonic() - self.last_flush >= self.FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.pending:  # fire and forget: the rows carry their step, the driver orders them
            self.coordinator.report_rows.remote("rounds", self.pending)
            self.pending = []
        self.last_flush = time.monotonic()

    def send_and_wait(self, table: str, rows: list[dict]) -> None:
        """Rows the run must not lose (evaluations; everything before a checkpoint), with a check that the
        coordinator is still the one this learner group joined."""
        self.flush()
        if ray.get(self.coordinator.report_rows.remote(table, rows)) != self.incarnation:
            raise CoordinatorRestarted("the coordinator was restarted: the learner group restarts from its last "
                                       "checkpoint")

    def on_epoch(self, result: EpochResult) -> None:
        self.send_and_wait("epochs", epoch_rows(result))

    def checkpoint(self, global_step: int, payloads: dict[str, dict], end_of_epoch: bool,
                   result: EpochResult | None) -> None:
        self.send_and_wait("rounds", [])
        if self.best is not None:
            self.best.update(result, payloads, global_step)
        state = checkpoint_state(self.config, global_step, end_of_epoch, self.best.best_score if self.best else None)
        with tempfile.TemporaryDirectory(prefix="generalist-ckpt-") as folder:
            ckpt.write_payloads(Path(folder), payloads, {"position": global_step})
            if self.rank == 0:
                ckpt.write_json_atomic(Path(folder) / "state.json", {"format": ckpt.FORMAT_VERSION, **state})
            try:
                ray_train.report({"global_step": global_step}, checkpoint=Checkpoint.from_directory(folder),
                                 checkpoint_dir_name=f"step-{global_step:010d}")
            except BroadcastCollectiveTimeoutError as error:  # Ray Train's barrier, under report_timeout_s
                raise self._never_reached_checkpoint(global_step, error) from None

    def _never_reached_checkpoint(self, global_step: int, error: BroadcastCollectiveTimeoutError) -> BackendError:
        groups = config_groups(self.config)
        cause = getattr(error, "cause", error)  # ray.get raises a RayTaskError that is also the cause's class
        missing = sorted(k for rank in getattr(cause, "_missing_ranks", None) or [] for k in groups[rank])
        who = f"learner(s) {missing}" if missing else "a peer"
        return BackendError(
            f"worker {self.rank}: {who} never arrived at the checkpoint of step {global_step} "
            f"(hung or too slow) within {report_timeout_s(self.config.runtime.sync_timeout_s):.0f} s "
            "(runtime.sync_timeout_s plus a margin for the global learner's evaluation). Raise "
            "runtime.sync_timeout_s if a learner can take that long to evaluate.")


# How long a worker waits in Ray Train's report barrier (abortable_trainer). The workers enter it right after a
# sync, except that rank 0 first evaluates the global learner (and re-estimates its statistics), so the barrier
# gets our deadline plus a margin for that evaluation.
REPORT_MARGIN_S = 60.0


def report_timeout_s(sync_timeout_s: float) -> float:
    return sync_timeout_s + REPORT_MARGIN_S


class ThrottledArrivals:
    """A learner's arrivals at syncs, told to the coordinator at most every FLUSH_EVERY_S seconds (a Ray task
    per sync would sit on the critical path at sync_every = 1), and at once before the learner blocks in a
    wait (collective_sync.Arrivals). A hung learner is named correctly all the same: it never told a step
    it did not reach."""

    FLUSH_EVERY_S = 0.5

    def __init__(self, coordinator, rank: int):
        self.coordinator = coordinator
        self.rank = rank
        self.step: int | None = None
        self.sent_at = 0.0

    def arrive(self, step: int) -> None:
        self.step = step
        if time.monotonic() - self.sent_at >= self.FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.step is not None:
            self.coordinator.arrive.remote(self.rank, self.step)  # fire and forget
            self.step = None
        self.sent_at = time.monotonic()


class Heartbeat:
    """Tells the coordinator every EVERY_S seconds how many optimiser steps this learner has done, from a
    daemon thread. A learner that trains on between syncs keeps beating, so its peers waiting in a sync know
    it is slow, not hung; a stopped process (or a dead node) stops beating."""

    EVERY_S = 2.0

    def __init__(self, coordinator, rank: int, learner):
        # A worker's learners step together (one round each, one after another): its first learner's count
        # is the worker's progress.
        self.stopped = threading.Event()

        def beat() -> None:
            while not self.stopped.wait(self.EVERY_S):
                coordinator.beat.remote(rank, learner.steps_done)  # fire and forget

        threading.Thread(target=beat, name="generalist-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()


def learner_worker(spec: dict) -> None:
    """Ray Train's `train_loop_per_worker`: world rank r runs the base learners of group r (one, or those that
    share its GPU) to the end of training, one after another in each round, as the in-process backend does.

    Each worker also holds a replica of the global learner, mixed through the mixing group (CollectiveSync);
    the coordinator hands out the mixing plan and hears where each worker is."""
    config = GeneralistConfig.from_dict(spec["config"])
    rank = ray_train.get_context().get_world_rank()
    groups = config_groups(config)
    device = _learner_device(config, rank)
    set_determinism(config.runtime.use_deterministic(device.type), config.runtime.threads)
    coordinator = ray.get_actor(spec["coordinator"], namespace=spec["namespace"])
    data = prepare_run_data(config)
    learners = build_learners(config, data, groups[rank], device)
    global_learner = GlobalLearner(config, data.initial_state, device, steps_per_epoch=data.stream.steps_per_epoch)
    start_step, best_score = 0, None
    checkpoint = ray_train.get_checkpoint()
    if checkpoint is None and spec["resume_folder"]:
        resume: Location = spec["resume_folder"]  # on a URI's filesystem, Ray downloads it when it is remote
        checkpoint = Checkpoint.from_directory(resume.path) if resume.native else \
            Checkpoint(resume.path, filesystem=resume.fs)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = ckpt.read_state(folder)
            # every replica of the global learner starts from it
            names = [f"learner-{learner.name}" for learner in learners] + [GLOBAL]
            payloads = load_resume_payloads({**state, "folder": folder, "learners": config.learner_names},
                                            config, names, device)
            for learner in learners:
                learner.load_state_dict(payloads[f"learner-{learner.name}"])
            global_learner.load_state_dict(payloads[GLOBAL])
            start_step, best_score = learners[0].steps_done, state.get("best_score")
    node = ray.get_runtime_context().get_node_id()
    joined = ray.get(coordinator.join.remote(rank, os.getpid(), ray.get_gpu_ids(), start_step, node, str(device)),
                     timeout=config.runtime.sync_timeout_s)
    sync = CollectiveSync(
        config, rank, global_learner, groups=groups,
        group=new_mixing_group(joined["mixing_backend"], device, config.runtime.sync_timeout_s),
        timeout_s=config.runtime.sync_timeout_s,
        start_step=joined["start_step"],
        plan=joined["plan"],
        shared_memory=joined["shared_memory"],
        arrivals=ThrottledArrivals(coordinator, rank),
        missing=lambda step: ray.get(coordinator.missing.remote(step), timeout=30),
        progress=lambda: ray.get(coordinator.progress.remote(), timeout=30))
    heartbeat = Heartbeat(coordinator, rank, learners[0])
    sink = WorkerSink(config, rank, coordinator, spec["run_location"], best_score, joined["incarnation"])
    try:
        train_learners(config, data, learners, sync, sink, start_step=start_step, owns_global=rank == 0,
                       global_state_for_eval=sync.global_state, device=device)
    except DETERMINISTIC_ERRORS as error:
        coordinator.fail.remote(rank, type(error).__name__, str(error))  # the driver ends the run on it
        raise
    finally:
        heartbeat.stop()
    sync.close()
    sink.flush()


def _learner_device(config: GeneralistConfig, rank: int) -> torch.device:
    """The GPU Ray gave this worker, or the CPU: with runtime.device=auto a worker that was given a GPU but
    sees no CUDA device (a cluster that advertises GPUs it has no driver for) trains on its CPU."""
    runtime = config.runtime
    if runtime.gpus_per_learner and runtime.device != "cpu" and torch.cuda.is_available():
        return ray_train.torch.get_device()
    if runtime.device == "cuda":
        raise ConfigError(f"runtime.device=cuda but worker {rank} (learners {config_groups(config)[rank]}) sees no "
                          "CUDA GPU (a driver missing on its node?); "
                          "use runtime.device=auto to train on CPUs")
    return torch.device("cpu")


def _place(config: GeneralistConfig, folder: RunFolder, quiet: bool) -> GeneralistConfig:
    """Resolve runtime.gpus_per_learner against the cluster (placement.resolve_gpus) and then how many learners
    share a worker (placement.resolve_grouping), say the choices and store them in the session's metadata;
    config.json keeps what the user asked for, so a resume chooses again."""
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    gpus, line = resolve_gpus(config, cluster_gpus)
    config = with_gpus(config, gpus)
    per_worker, grouping = resolve_grouping(config)
    if not quiet:
        print(f"{line}\n{grouping}", flush=True)
    folder.add_metadata({"placement": {"gpus_per_learner": gpus, "cluster_gpus": cluster_gpus,
                                       "learners": len(config.learners), "learners_per_worker": per_worker,
                                       "automatic": config.runtime.gpus_per_learner is None, "line": line,
                                       "grouping": grouping}})
    return with_grouping(config, per_worker)


def _check_capacity(config: GeneralistConfig) -> None:
    """Fail early, with numbers, when the cluster cannot hold the worker group.

    On an autoscaling cluster, `runtime.wait_for_resources_s` gives new nodes time to join first."""
    k, runtime = len(config.learners), config.runtime
    workers = len(config_groups(config))
    cpus, gpus = worker_resources(config)
    need_gpu, need_cpu = workers * gpus, workers * cpus
    deadline = time.monotonic() + runtime.wait_for_resources_s
    total = ray.cluster_resources()
    while (total.get("GPU", 0) < need_gpu or total.get("CPU", 0) < need_cpu) and time.monotonic() < deadline:
        time.sleep(5)
        total = ray.cluster_resources()
    if need_gpu > total.get("GPU", 0):
        raise BackendError(
            f"asked for {need_gpu:g} GPUs ({k} learners x runtime.gpus_per_learner={runtime.gpus_per_learner:g}"
            f"{_in_workers(config, workers, gpus)}), "
            f"the cluster has {total.get('GPU', 0):g}; add GPUs, or share them with a fractional "
            f"runtime.gpus_per_learner (e.g. {total.get('GPU', 0) / k:.2g})")
    if need_cpu > total.get("CPU", 0):
        raise BackendError(
            f"asked for {need_cpu:g} CPUs ({k} learners x runtime.cpus_per_learner={runtime.cpus_per_learner:g}"
            f"{_in_workers(config, workers, cpus)}), "
            f"the cluster has {total.get('CPU', 0):g}; lower runtime.cpus_per_learner")


def _in_workers(config: GeneralistConfig, workers: int, per_worker: float) -> str:
    """How grouped learners add up (Ray asks every worker for its largest group's amount), or nothing."""
    if (config.runtime.learners_per_worker or 1) == 1:
        return ""
    return (f", grouped {config.runtime.learners_per_worker} per worker (runtime.learners_per_worker): {workers} "
            f"worker(s) x {per_worker:g}")


def _connect(address: str | None, config: GeneralistConfig) -> bool:
    """Join `address` (a running cluster) or start a local Ray on 127.0.0.1; True if we started it."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    cpus = max(os.cpu_count() or 1, int(len(config_groups(config)) * worker_resources(config)[0] + 0.999))
    # Learner logs stay in Ray's session folder (/tmp/ray/session_latest/logs): their progress reaches the
    # driver through the coordinator, and their errors as exceptions.
    start_local_ray(dict(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                         _node_ip_address="127.0.0.1", configure_logging=True, logging_level="error"))
    return True


def _storage_path(run_dir: Location) -> str:
    return str(Path(run_dir.path).resolve()) if run_dir.native else run_dir.path


def _sessions(run_dir: Location) -> list[Location]:
    return [child for child in run_dir.children() if child.name.startswith("ray-session-")]


def train_ray(config: GeneralistConfig, run_dir: str | Path | Location, *, resume: bool | Resume = False,
              max_rounds: int | None = None, address: str | None = None, quiet: bool = False) -> dict:
    if max_rounds is not None:
        raise ConfigError("max_rounds is a debugging stop of the local backend; stop a Ray run by killing it")
    folder = RunFolder(run_dir)
    state = folder.start(config, resume)
    started_ray = _connect(address, config)
    try:
        config = _place(config, folder, quiet)
        _check_capacity(config)
        return _fit(config, folder, state, quiet)
    finally:
        if started_ray:
            ray.shutdown()


def with_driver_paths(config: GeneralistConfig) -> GeneralistConfig:
    """The config the workers get: the data folder the user named (data.root, else $GENERALIST_DATA) made
    absolute on the driver. Paths the user gives are the user's: a worker's working directory is Ray's session
    folder, where `../shared/data` would name another place. (The run folder and a --resume-from checkpoint are
    made absolute by storage.locate.) The data folder is a local folder on every node (torchvision reads it), never
    a URI: `Path` would turn `s3://b` into `s3:/b`, so no URI branch is kept here."""
    root = os.path.abspath(resolve_data_root(config.data.root))
    return replace(config, data=replace(config.data, root=root))


def _fit(config: GeneralistConfig, folder: RunFolder, state: dict | None, quiet: bool) -> dict:
    run_data = prepare_run_data(config)  # fail here, in the driver, on a missing or corrupt dataset
    config = with_driver_paths(config)
    namespace = ray.get_runtime_context().namespace
    session = len(_sessions(folder.path)) + 1
    name = f"generalist-coordinator-{os.getpid()}-{session}-{time.time_ns()}"
    # Restartable: a dead coordinator comes back under the same name, calls to it wait for it, and the learners
    # fail over to their last checkpoint when they see its new incarnation (counted against max_failures).
    # On the driver's node: losing another node must not take the control plane with it (its metric rows not yet
    # drained would be lost with it; tests/ray/test_two_nodes.py).
    coordinator = Coordinator.options(name=name, namespace=namespace, max_restarts=-1, max_task_retries=-1,
                                      scheduling_strategy=NodeAffinitySchedulingStrategy(
                                          ray.get_runtime_context().get_node_id(), soft=True)).remote(config)
    spec = {"config": config.to_dict(), "coordinator": name, "namespace": namespace, "run_location": folder.path,
            # An earlier session's (or the local backend's) checkpoint; restarts inside this session use
            # the checkpoints Ray Train has seen reported instead.
            "resume_folder": locate(state["folder"]) if state else None}
    runtime = config.runtime
    groups = config_groups(config)
    cpus, gpus = worker_resources(config)
    use_gpu = gpus > 0
    resources = {"CPU": cpus, **({"GPU": gpus} if use_gpu else {})}
    trainer = AbortableTorchTrainer(
        learner_worker,
        train_loop_config=spec,
        # gloo here, for Ray Train's own use; the mixing has a group of its own (mixing_group.new_mixing_group,
        # NCCL or gloo as decided at join) with a timeout past ours, so a hung peer is reported by name.
        torch_config=TorchConfig(backend="gloo", timeout_s=int(runtime.sync_timeout_s) + 300),
        report_timeout_s=report_timeout_s(runtime.sync_timeout_s),
        scaling_config=ScalingConfig(num_workers=len(groups), use_gpu=use_gpu,
                                     resources_per_worker=resources, placement_strategy=runtime.placement),
        # A URI's filesystem goes to Ray Train as is (credentials, endpoint), with the path its scheme stripped.
        run_config=RunConfig(name=f"ray-session-{session}", storage_path=_storage_path(folder.path),
                             storage_filesystem=None if folder.path.native else folder.path.fs,
                             failure_config=FailureConfig(max_failures=runtime.max_failures)),
    )
    sink = FolderSink(config, folder, run_data.stream.steps_per_epoch,
                      best_score=state.get("best_score") if state else None, quiet=quiet)
    sink.metrics.truncate_after(state["global_step"] if state else 0)
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # noqa: BLE001 - re-raised in the driver thread below
            outcome["error"] = error

    started = time.perf_counter()
    try:
        thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
        thread.start()
        fatal = None
        while thread.is_alive():
            thread.join(timeout=2.0)
            status = ray.get(coordinator.drain.remote())
            _relay(status, sink, config)
            if status["fatal"] and fatal is None:
                fatal = status["fatal"]
                trainer.abort()  # a restart would fail the same way: no retry
        status = ray.get(coordinator.drain.remote())
        _relay(status, sink, config)
        sink.metrics.persist()
        fatal = fatal or status["fatal"]
        if fatal is not None:
            raise {cls.__name__: cls for cls in DETERMINISTIC_ERRORS}[fatal["type"]](fatal["message"])
        if "error" in outcome:
            user_error = _user_error(outcome["error"])
            if user_error is not None:  # a deterministic error the coordinator had not heard of yet
                raise user_error
            raise BackendError(f"the learner group failed after {config.runtime.max_failures} restart(s) "
                               f"(runtime.max_failures): {describe_failure(outcome['error'], config)}; fix the cause "
                               "and continue with --resume") from outcome["error"]
        result = outcome["result"]
        # Training ends with an end-of-epoch checkpoint, which holds the final global learner.
        with result.checkpoint.as_directory() as last:
            sink.best.best_score = ckpt.read_state(last).get("best_score")
            global_state = ckpt.load_payload(last, GLOBAL, "cpu")["state"]
        sink.metrics.flush()
    finally:
        ray.kill(coordinator)  # on every way out: a named actor would outlive the run
    return finish(config, run_data, folder, global_state, sink, time.perf_counter() - started, quiet)


def describe_failure(error: BaseException, config: GeneralistConfig) -> str:
    """Which learner(s) failed last and with what exception, in one line, without Ray's generic advice."""
    failures = _worker_failures(error)
    if not failures:
        return f"{type(error).__name__}: {_first_line(error)}"
    parts = []
    causes = {rank: getattr(failure, "cause", None) or failure  # a task error wraps the learner's own exception
              for rank, failure in failures.items()}
    # A dead process first: the others' errors (a sync that broke) are what its death did to them.
    for rank, cause in sorted(causes.items(), key=lambda item: (isinstance(item[1], GeneralistError), item[0])):
        groups = config_groups(config)
        names = [config.learner_names[k] for k in groups[rank]] if 0 <= rank < len(groups) else []
        who = f"learner {names[0]!r}" if len(names) == 1 else f"learners {names}" if names else "worker"
        parts.append(f"{who} (rank {rank}): {type(cause).__name__}: {_first_line(cause)}")
    return "; ".join(parts)


def _worker_failures(error: BaseException) -> dict:
    """rank -> exception of the worker group failure inside `error`, if there is one."""
    return next((e.worker_failures for e in _error_chain(error) if getattr(e, "worker_failures", None)), {})


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else "(no message)"
    return text if len(text) <= 200 else text[:197] + "..."


def _user_error(error: BaseException) -> GeneralistError | None:
    """The deterministic error a learner raised (DETERMINISTIC_ERRORS), dug out of Ray's wrappers."""
    return next((e for e in _error_chain(error) if isinstance(e, DETERMINISTIC_ERRORS)), None)


def _error_chain(error: BaseException):
    """`error` and every exception behind it: causes, contexts, Ray's wrapped causes and workers' failures."""
    seen, todo = set(), [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend([current.__cause__, current.__context__, getattr(current, "cause", None)])
        todo.extend(getattr(current, "worker_failures", None) and current.worker_failures.values() or [])
        if hasattr(current, "as_instanceof_cause"):
            try:
                todo.append(current.as_instanceof_cause())
            except Exception:  # noqa: BLE001 - a wrapper that cannot rebuild its cause adds nothing
                pass


def _relay(status: dict, sink: FolderSink, config: GeneralistConfig) -> None:
    """Write the rows the learners sent through the coordinator, as the in-process backend does."""
    rounds: dict[int, list[dict]] = {}
    epochs = sink.pending_epochs  # epoch -> model -> row, kept across relays until every model has reported
    for table, row in status["rows"]:
        if table == "restart":
            sink.metrics.truncate_after(row["global_step"])  # the steps after it are run again
            if not sink.quiet and row["global_step"] > 0:
                print(f"learner group (re)started from step {row['global_step']}", flush=True)
        elif table == "rounds":
            rounds.setdefault(row["global_step"], []).append(row)
        else:
            epochs.setdefault(row["epoch"], {})[row["model"]] = row
            sink.metrics.append(table, [row])
    for step in sorted(rounds):
        rows = sorted(rounds[step], key=lambda r: config.learner_names.index(r["learner"]))
        sink.metrics.append("rounds", rows)
        if len(rows) == len(config.learners):
            stats = [RoundStats(**{k: r[k] for k in RoundStats.__dataclass_fields__}) for r in rows]
            sink.show_round(rows[0]["epoch"], step, stats, [r["weight"] for r in rows], rows[0]["redistributed"],
                            max(r["sync_seconds"] for r in rows))
    for epoch in sorted(epochs):
        if len(epochs[epoch]) < len(config.learners) + 1:
            continue
        models = epochs.pop(epoch)
        sink.metrics.flush()
        order = config.learner_names + [GLOBAL]
        accuracy = {name: accuracy_fields(models[name]) for name in order}
        sink.show_epoch(epoch, accuracy)
    if status["rows"]:
        sink.metrics.persist()  # through a URI, rows reach storage within a relay period, as appends do locally
