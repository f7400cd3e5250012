"""A run folder: its config, metadata, checkpoints (last, best), metrics and final model.

Layout:
    RUN/config.json          the resolved config, written before the first step; enough to rerun
    RUN/metadata.json        how the run was made (git, versions, hardware, command)
    RUN/checkpoints/last/    learner-NAME.pt, global.pt (+ .json sidecars), state.json
    RUN/checkpoints/best/    global.pt of the best validation epoch (never selected on the test set)
    RUN/metrics/             rounds.{jsonl,parquet}, epochs.{jsonl,parquet}
    RUN/final/global.pt      the shipped global model (a bare state_dict) and summary.json

RUN is a local path or a URI pyarrow understands (s3://, gs://, file://...): see `generalist.storage`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from generalist import checkpoint as ckpt
from generalist.config import RunConfig
from generalist.errors import CheckpointError, RunFolderError
from generalist.learner import RoundStats
from generalist.metrics import MetricsLog, Progress
from generalist.repro import run_metadata
from generalist.storage import Location, locate
from generalist.training import GLOBAL, EpochResult, checkpoint_state, epoch_rows, round_rows


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


class RunFolder:
    def __init__(self, path: str | Path | Location):
        self.path = locate(path)
        self.last = self.path / "checkpoints" / "last"
        self.best = self.path / "checkpoints" / "best"

    def holds_run(self) -> bool:
        return (self.path / "config.json").exists() or (self.path / "checkpoints").exists()

    def start(self, config: RunConfig, resume: bool, extra_checkpoints=None) -> dict | None:
        """Prepare the folder; return the checkpoint state to resume from (None for a fresh run).

        `extra_checkpoints(path)` may name another checkpoint folder (a Ray session's); the newest wins."""
        if not resume:
            if self.holds_run():
                raise RunFolderError(
                    f"{self.path} already holds a run; pass --resume to continue it, or choose a new --run-dir "
                    "(nothing in it was changed)")
            self.path.make_dir()
            ckpt.write_json_atomic(self.path / "config.json", config.to_dict())
            ckpt.write_json_atomic(self.path / "metadata.json", run_metadata())
            return None
        candidates = [c for c in (ckpt.find_checkpoint(self.last),
                                  extra_checkpoints(self.path) if extra_checkpoints else None) if c is not None]
        if not candidates:
            if not (self.path / "config.json").is_file():
                raise RunFolderError(f"--resume: {self.path} has no checkpoint to resume from "
                                     "(start it without --resume, or check the path)")
            # Started, but stopped before its first checkpoint (killed in its first epoch, or a dataset error):
            # resuming it is starting again from step 0 with the config it was made with.
            diff = fingerprint_diff(self.load_config().fingerprint(), config.fingerprint())
            if diff:
                raise RunFolderError(f"{self.path / 'config.json'} was made by a different config: {diff}; "
                                     "resume with the run's own config.json, or start a new run folder")
            ckpt.write_json_atomic(self.path / f"metadata-resume-{int(time.time())}.json", run_metadata())
            return None
        states = [(ckpt.read_state(c), c) for c in candidates]
        state, found = max(states, key=lambda item: item[0]["global_step"])
        diff = fingerprint_diff(state.get("fingerprint", {}), config.fingerprint())
        if diff:
            raise CheckpointError(f"the checkpoint in {found} was made by a different config: {diff}; "
                                  "resume with the run's own config.json, or start a new run folder")
        state["folder"] = found if not found.native else str(found)
        ckpt.write_json_atomic(self.path / f"metadata-resume-{int(time.time())}.json", run_metadata())
        return state

    def load_config(self) -> RunConfig:
        try:
            return RunConfig.from_dict(json.loads((self.path / "config.json").read_text()))
        except FileNotFoundError:
            raise RunFolderError(f"{self.path} has no config.json: it is not a run folder") from None
        except json.JSONDecodeError as error:
            raise RunFolderError(f"{self.path / 'config.json'} is corrupt: {error}") from None

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
