"""The in-process backend: all K learners in this process, mixed directly. For tests and debugging."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from generalist.config import RunConfig
from generalist.evaluation.validation import run_threats
from generalist.learner import Learner
from generalist.mixing import GlobalLearner, StateDict
from generalist.repro import resolve_device, set_determinism
from generalist.run_folder import FolderSink, Resume, RunFolder, format_table, load_resume_payloads
from generalist.records import GLOBAL, accuracy_fields
from generalist.training import RunData, prepare_run_data, shipped_global_state, train_learners


class LocalSync:
    """The coordinator's job done in-process: mix the K EMAs into the global learner every round."""

    def __init__(self, global_learner: GlobalLearner, num_learners: int):
        self.global_learner = global_learner
        self.num_learners = num_learners

    def exchange(self, epoch: int, n_steps: int, emas: dict[int, torch.Tensor]) -> StateDict | None:
        redistribute = self.global_learner.sync([emas[k] for k in range(self.num_learners)], epoch, n_steps)
        return self.global_learner.state if redistribute else None

    def global_payload(self) -> dict:
        return self.global_learner.state_dict()

    def settle(self) -> None:
        pass  # one global learner, always current


def build_learners(config: RunConfig, data: RunData, indices: list[int], device) -> list[Learner]:
    return [Learner(config, k, data.initial_state, data.stream, data.model_kwargs, device) for k in indices]


def train_local(config: RunConfig, run_dir: str | Path, *, resume: bool | Resume = False,
                max_rounds: int | None = None,
                quiet: bool = False) -> dict:
    folder = RunFolder(run_dir)
    state = folder.start(config, resume)
    device = resolve_device(config.runtime.device)
    set_determinism(config.runtime.use_deterministic(device.type), config.runtime.threads)
    data = prepare_run_data(config)
    learners = build_learners(config, data, list(range(len(config.learners))), device)
    global_learner = GlobalLearner(config, data.initial_state, device, steps_per_epoch=data.stream.steps_per_epoch)
    start_step, best = 0, None
    if state is not None:
        names = [f"learner-{n}" for n in config.learner_names] + [GLOBAL]
        payloads = load_resume_payloads(state, config, names, device)
        for learner in learners:
            learner.load_state_dict(payloads[f"learner-{learner.name}"])
        global_learner.load_state_dict(payloads[GLOBAL])
        start_step, best = state["global_step"], state.get("best_score")
    sink = FolderSink(config, folder, data.stream.steps_per_epoch, best_score=best, quiet=quiet)
    sink.metrics.truncate_after(start_step)
    started = time.perf_counter()
    train_learners(config, data, learners, LocalSync(global_learner, len(learners)), sink, start_step=start_step,
                   owns_global=True, global_state_for_eval=lambda: global_learner.state, device=device,
                   max_rounds=max_rounds)
    return finish(config, data, folder, global_learner.state, sink, time.perf_counter() - started, quiet)


def finish(config: RunConfig, data: RunData, folder: RunFolder, global_state: StateDict, sink: FolderSink,
           seconds: float, quiet: bool) -> dict:
    """Write the final global model (generalist.training.shipped_global_state) and summary; print the last
    validation table."""
    latest = {row["model"]: row for row in sink.metrics.rows("epochs")}
    norms = [attack.norm for attack in run_threats(config)]
    last = {name: accuracy_fields(latest[name], norms) for name in [*config.learner_names, GLOBAL] if name in latest}
    summary = {"recipe": config.recipe, "seed": config.seed, "backend": config.runtime.backend,
               "train_seconds_this_session": round(seconds, 2), "final_validation": last,
               "best_validation_score": sink.best_score}
    folder.write_final(shipped_global_state(config, data, global_state), summary)
    if not quiet:
        print(f"\nfinished {config.recipe} in {seconds:.0f} s; final validation accuracy (%), "
              f"{config.eval.n_examples} held-out training points:\n{format_table(last)}\n"
              f"global model: {folder.path / 'final' / 'global.pt'}", flush=True)
    return summary
