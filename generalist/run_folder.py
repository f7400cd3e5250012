"""A run folder: its config, metadata, checkpoints (last, best), metrics and final model.

Layout:
    RUN/config.json          the resolved config, written before the first step; enough to rerun
    RUN/metadata.json        how the run was made (git, versions, hardware, command)
    RUN/checkpoints/last/    learner-NAME.pt, global.pt (+ .json sidecars), state.json
    RUN/checkpoints/best/    global.pt of the best validation epoch (never selected on the test set)
    RUN/metrics/             rounds.{jsonl,parquet}, epochs.{jsonl,parquet}
    RUN/final/global.pt      the shipped global model (a bare state_dict) and summary.json
    RUN/ray-session-N/step-*/  the Ray backend's checkpoints, one folder each (Ray Train writes them)

RUN is a local path or a URI pyarrow understands (s3://, gs://, file://...): see `generalist.storage`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from generalist import checkpoint as ckpt
from generalist.config import RunConfig, load_run_config
from generalist.data import check_training_data
from generalist.errors import CheckpointError, RunFolderError
from generalist.metrics import MetricsLog, Progress
from generalist.records import GLOBAL, EpochResult, RoundStats, checkpoint_state, epoch_rows, round_rows
from generalist.repro import run_metadata
from generalist.storage import Location, locate


def fingerprint_diff(saved: dict, current: dict, where: str = "") -> str | None:
    """The first dotted key where two config fingerprints differ, or None."""
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        path = f"{where}.{key}" if where else key
        if isinstance(a, dict) and isinstance(b, dict):
            found = fingerprint_diff(a, b, path)
            if found:
                return found
        elif a != b:
            return f"{path} (checkpoint: {a!r}, now: {b!r})"
    return None


@dataclass(frozen=True)
class Resume:
    """What `--resume` asks for; `resume=True` means `Resume()`, the newest usable checkpoint.

    `source` (`--resume-from`): a global step ("1400"), or a checkpoint folder (a path, relative to the working
    directory or to the run folder, or a URI). `restart_if_no_checkpoint` (`--restart-if-no-checkpoint`): when
    the run folder holds no usable checkpoint, train again from step 0 with its config instead of stopping."""

    source: str | None = None
    restart_if_no_checkpoint: bool = False


def as_resume(resume: bool | Resume | None) -> Resume | None:
    """None for a new run, else what to resume; backends pass `resume` through to `RunFolder.start` as given."""
    if isinstance(resume, Resume):
        return resume
    return Resume() if resume else None


class RunFolder:
    def __init__(self, path: str | Path | Location):
        self.path = locate(path)
        self.last = self.path / "checkpoints" / "last"
        self.best = self.path / "checkpoints" / "best"

    def checkpoint_folders(self) -> list[Location]:
        """Every folder meant to hold a checkpoint to resume from, complete or not: checkpoints/last and the copy
        a crash mid-swap leaves beside it, and the step-* folders of each Ray session (Ray Train writes those)."""
        last, *crash_copies = ckpt.copies(self.last)
        # A copy left by a crash mid-swap counts when complete; without state.json it is half-written or
        # half-deleted scratch of an atomic write, not a checkpoint anybody saved.
        found = [last] if last.is_dir() else []
        found += [copy for copy in crash_copies if (copy / "state.json").is_file()]
        for session in self.path.children():
            if session.name.startswith("ray-session-"):
                found += [step for step in session.children() if step.name.startswith("step-") and step.is_dir()]
        return found

    def holds_checkpoint(self) -> bool:
        """True once training saved anything worth keeping: a checkpoint (even a broken one) or a final model."""
        return bool(self.checkpoint_folders()) or self.best.exists() or (self.path / "final").exists()

    def start(self, config: RunConfig, resume: bool | Resume | None) -> dict | None:
        """Prepare the folder; return the checkpoint state to resume from (None to train from step 0).

        Nothing is written before the config, the data and the checkpoint to resume from are known good, so a
        failure here leaves the folder as it was. A folder that holds no checkpoint yet may start a new run.
        The candidates are every checkpoint folder of the run, the Ray sessions' included."""
        request = as_resume(resume)
        self._check_is_folder()
        if request is None:
            if self.holds_checkpoint():
                raise RunFolderError(
                    f"{self.path} already holds a run; pass --resume to continue it, or choose a new --run-dir "
                    "(nothing in it was changed)")
            _check_data(config)
            self._make()
            ckpt.write_json_atomic(self.path / "config.json", config.to_dict())
            ckpt.write_json_atomic(self.path / "metadata.json", run_metadata())
            return None
        folders = self.checkpoint_folders()
        if request.source is not None:
            state = self._chosen_checkpoint(config, request.source, folders)
        else:
            state = self._newest_usable_checkpoint(config, request, folders)
        _check_data(config)
        ckpt.write_json_atomic(self.path / f"metadata-resume-{int(time.time())}.json", run_metadata())
        if state is not None:
            print(f"resuming from {state['folder']} (step {state['global_step']})", flush=True)
        return state

    def _newest_usable_checkpoint(self, config: RunConfig, request: Resume, folders: list[Location]) -> dict | None:
        """The newest checkpoint whose files are all whole; each newer one skipped is named on stderr."""
        if not folders:
            return self._nothing_to_resume(config, request)
        skipped = []
        for folder in sorted(folders, key=_newest_first):
            try:
                state = self._usable_state(config, folder)
            except _Unusable as why:
                skipped.append(str(why))
                continue
            for reason in skipped:
                print(f"warning: skipped a checkpoint: {reason}", file=sys.stderr, flush=True)
            return state
        reasons = "; ".join(skipped)
        if request.restart_if_no_checkpoint:
            print(f"warning: no usable checkpoint ({reasons}); training again from step 0 "
                  "(--restart-if-no-checkpoint)", file=sys.stderr, flush=True)
            return None
        raise CheckpointError(
            f"no usable checkpoint in {self.path}: {reasons}; restore it, name one elsewhere with --resume-from PATH, "
            "or train again from step 0 with --resume --restart-if-no-checkpoint")

    def _nothing_to_resume(self, config: RunConfig, request: Resume) -> None:
        if not (self.path / "config.json").is_file():
            raise RunFolderError(f"--resume: {self.path} has no checkpoint to resume from "
                                 "(start it without --resume, or check the path)")
        # Started, but stopped before its first checkpoint (killed in its first epoch, or a dataset error).
        diff = fingerprint_diff(self.load_config().fingerprint(), config.fingerprint())
        if diff:
            raise RunFolderError(f"{self.path / 'config.json'} was made by a different config: {diff}; "
                                 "resume with the run's own config.json, or start a new run folder")
        if not request.restart_if_no_checkpoint:
            raise RunFolderError(
                f"--resume: {self.path} holds no checkpoint yet (the run stopped before its first one); train it "
                "again from step 0 with --resume --restart-if-no-checkpoint")
        print(f"{self.path} holds no checkpoint yet: training again from step 0 (--restart-if-no-checkpoint)",
              flush=True)
        return None

    def _chosen_checkpoint(self, config: RunConfig, source: str, folders: list[Location]) -> dict:
        """--resume-from: the checkpoint of that global step in this run folder, or that folder; never another."""
        if source.strip().isdigit():
            step = int(source)
            matches = [f for f in sorted(folders, key=_newest_first) if _step_of(f) == step]
            if not matches:
                steps = sorted({s for s in map(_step_of, folders) if s is not None})
                raise CheckpointError(f"--resume-from {step}: {self.path} holds no checkpoint of step {step}; it "
                                      f"holds steps {', '.join(map(str, steps)) or 'none'}")
        else:
            where = locate(source)
            if where.native and not where.exists() and (self.path / source).exists():
                where = self.path / source  # relative to the run folder
            if not where.is_dir():
                raise CheckpointError(f"--resume-from {source}: no such checkpoint folder; give a global step "
                                      "or a folder holding state.json")
            matches = [where]
        reasons = []
        for folder in matches:
            try:
                return self._usable_state(config, folder)
            except _Unusable as why:
                reasons.append(str(why))
        raise CheckpointError(f"--resume-from {source}: {'; '.join(reasons)}; choose another checkpoint")

    def _usable_state(self, config: RunConfig, folder: Location) -> dict:
        """The state of `folder` if it can be resumed from: _Unusable if it is broken, CheckpointError if it was
        made by another config (resuming any checkpoint of this run with it would be wrong, so no fallback)."""
        try:
            state = ckpt.read_state(folder)
        except CheckpointError as error:
            raise _Unusable(str(error)) from None
        diff = fingerprint_diff(state.get("fingerprint", {}), config.fingerprint())
        if diff:
            raise CheckpointError(f"the checkpoint in {folder} was made by a different config: {diff}; "
                                  "resume with the run's own config.json, or start a new run folder")
        try:
            ckpt.verify_payloads(folder, [f"learner-{name}" for name in config.learner_names] + [GLOBAL])
        except CheckpointError as error:
            raise _Unusable(str(error)) from None
        state["folder"] = folder if not folder.native else str(folder)
        return state

    def _check_is_folder(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"--run-dir {self.path} is a file, not a folder; choose a folder path "
                                 "(nothing was changed)")

    def _make(self) -> None:
        try:
            self.path.make_dir()
        except OSError as error:  # a file on the way, no permission, a read-only store
            raise RunFolderError(f"cannot create the run folder {self.path} ({error.strerror or error}); choose "
                                 "a folder you can write to") from None

    def load_config(self) -> RunConfig:
        self._check_is_folder()
        return load_run_config(self.path)

    def add_metadata(self, fields: dict) -> None:
        """Add fields (e.g. where the learners were placed) to this session's metadata file."""
        resumes = [c for c in self.path.children() if c.name.startswith("metadata-resume-")]
        target = max(resumes, key=lambda c: int(c.name.split("-")[-1].split(".")[0])) if resumes \
            else self.path / "metadata.json"
        current = json.loads(target.read_text()) if target.is_file() else {}
        ckpt.write_json_atomic(target, {**current, **fields})

    def write_final(self, global_state: dict, summary: dict) -> None:
        final = self.path / "final"
        (final / "global.pt").write_bytes(ckpt.tensor_bytes(global_state))
        ckpt.write_json_atomic(final / "summary.json", summary)


class _Unusable(Exception):
    """A checkpoint that cannot be resumed from; the message says which and why."""


def _step_of(folder: Location) -> int | None:
    """The global step a checkpoint folder says it holds (state.json, else a Ray `step-N` name), or None."""
    try:
        return ckpt.read_state(folder)["global_step"]
    except (CheckpointError, KeyError):
        pass
    name = folder.name.removeprefix("step-")
    return int(name) if name.isdigit() else None


def _newest_first(folder: Location) -> float:
    step = _step_of(folder)
    return -step if step is not None else -float("inf")  # a folder whose step is unknown is tried (and named) first


def _check_data(config: RunConfig) -> None:
    check_training_data(config.data.dataset, config.data.root, download=config.data.download,
                        val_size=config.data.val_size)


def selection_score(metrics: dict[str, float], select_on: str) -> tuple[float, float]:
    """Higher is better: clean + mean robust (ties broken by robust), or clean alone."""
    robust = [v for k, v in metrics.items() if k.startswith("pgd_acc_")]
    mean_robust = sum(robust) / len(robust) if robust else 0.0
    if select_on == "val_clean":
        return metrics["clean_acc"], mean_robust
    return metrics["clean_acc"] + mean_robust, mean_robust


def format_table(accuracy: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per model, clean and PGD accuracy in percent."""
    if not accuracy:
        return "(no evaluation)"
    columns = list(next(iter(accuracy.values())))
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for model, metrics in accuracy.items():
        lines.append(f"| {model} | " + " | ".join(f"{100 * metrics[c]:.2f}" for c in columns) + " |")
    return "\n".join(lines)


class BestTracker:
    """Keeps checkpoints/best: the global learner of the best validation epoch so far."""

    def __init__(self, config: RunConfig, folder: RunFolder, best_score=None):
        self.config = config
        self.folder = folder
        self.best_score = tuple(best_score) if best_score else None

    def update(self, result: EpochResult | None, payloads: dict[str, dict], global_step: int) -> None:
        if result is None or GLOBAL not in result.accuracy:
            return
        score = selection_score(result.accuracy[GLOBAL], self.config.eval.select_on)
        if self.best_score is None or score > self.best_score:
            self.best_score = score
            ckpt.write_checkpoint(self.folder.best, {GLOBAL: payloads[GLOBAL]},
                                  {"global_step": global_step, "position": global_step, "epoch": result.epoch,
                                   "val": result.accuracy[GLOBAL], "select_on": self.config.eval.select_on,
                                   "fingerprint": self.config.fingerprint(), "learners": self.config.learner_names})


class FolderSink:
    """Writes a process's rounds, epochs and checkpoints into the run folder, and shows progress."""

    def __init__(self, config: RunConfig, folder: RunFolder, steps_per_epoch: int, best_score=None,
                 print_every_s: float = 10.0, quiet: bool = False):
        self.config = config
        self.folder = folder
        self.metrics = MetricsLog(folder.path)
        self.spe = steps_per_epoch
        self.progress = Progress(config.schedule.epochs * steps_per_epoch)
        self.print_every_s = print_every_s
        self.last_print = 0.0
        self.best = BestTracker(config, folder, best_score)
        self.quiet = quiet
        self.pending_epochs: dict[int, dict[str, dict]] = {}  # Ray driver: epoch rows until all models report

    @property
    def best_score(self):
        return self.best.best_score

    def on_round(self, epoch: int, global_step: int, stats: list[RoundStats], weights: list[float],
                 redistributed: bool, sync_seconds: float) -> None:
        self.metrics.append("rounds", round_rows(self.config, epoch, global_step, stats, weights, redistributed,
                                                 sync_seconds))
        self.show_round(epoch, global_step, stats, weights, redistributed, sync_seconds)

    def show_round(self, epoch: int, global_step: int, stats: list[RoundStats], weights: list[float],
                   redistributed: bool, sync_seconds: float) -> None:
        now = time.perf_counter()
        if self.quiet or (now - self.last_print < self.print_every_s and global_step % self.spe != 0):
            return
        self.last_print = now
        parts = [f"{s.learner} loss {s.loss:.3f} acc {100 * s.train_acc:.1f}% {s.images / max(s.seconds, 1e-9):.0f} img/s"
                 for s in stats]
        gamma = " ".join(f"{w:.2f}" for w in weights)
        self.progress.report(global_step, epoch, self.config.schedule.epochs,
                             " | ".join(parts) + f" | gamma {gamma}" + (" | redistributed" if redistributed else "")
                             + f" | sync {1000 * sync_seconds:.1f} ms")

    def on_epoch(self, result: EpochResult) -> None:
        self.metrics.append("epochs", epoch_rows(result))
        self.metrics.flush()
        self.show_epoch(result.epoch, result.accuracy)

    def show_epoch(self, epoch: int, accuracy: dict) -> None:
        if accuracy and not self.quiet:
            print(f"validation after epoch {epoch} ({self.config.eval.n_examples} points, "
                  f"PGD-{self.config.eval.pgd_steps}):\n{format_table(accuracy)}", flush=True)

    def checkpoint(self, global_step: int, payloads: dict[str, dict], end_of_epoch: bool,
                   result: EpochResult | None) -> None:
        self.best.update(result, payloads, global_step)
        state = checkpoint_state(self.config, global_step, end_of_epoch, self.best.best_score)
        self.metrics.persist()  # through a URI, the rows up to this checkpoint must be stored before it is
        ckpt.write_checkpoint(self.folder.last, payloads, state)


def load_resume_payloads(state: dict, config: RunConfig, names: list[str],
                         map_location: str | torch.device = "cpu") -> dict[str, dict]:
    """Load and check the named payloads (learner-NAME, global) of the checkpoint `state` points to."""
    folder = locate(state["folder"])
    if state.get("learners") != config.learner_names:
        raise CheckpointError(f"{folder} holds learners {state.get('learners')}, the config has "
                              f"{config.learner_names}")
    return {name: ckpt.load_payload(folder, name, map_location) for name in names}
