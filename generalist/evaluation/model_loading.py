"""The model to evaluate, loaded from a run folder, a checkpoint folder or a bare .pt, and where it came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from generalist.config import RunConfig
from generalist.errors import CheckpointError, ConfigError


@dataclass
class ModelSource:
    """A model ready to evaluate and where it came from."""

    model: nn.Module
    name: str  # "global" or a learner's name
    architecture: str
    dataset: str
    checkpoint: str  # the file the weights came from
    run_dir: str | None
    config: RunConfig | None
    model_kwargs: dict
    bn_stats: str = "as saved"  # or how they were re-estimated (generalist eval --bn-stats)


def build_eval_model(architecture: str, dataset: str) -> tuple[nn.Module, dict]:
    from generalist.data import dataset_info
    from generalist.models import build_model

    info = dataset_info(dataset)
    kwargs = {"num_classes": info.num_classes, "in_channels": info.shape[0], "mean": info.mean, "std": info.std}
    return build_model(architecture, **kwargs), kwargs


def load_weights(model: nn.Module, state: dict, where: str, architecture: str) -> None:
    """load_state_dict(strict) with a one-line CheckpointError naming what does not fit."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where} does not hold a model state_dict (a mapping of names to tensors)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("shape differs", shapes)) if keys)
        raise CheckpointError(f"{where} is not a {architecture} checkpoint for this dataset ({detail}); "
                              "pass the --arch and --dataset it was trained with")
    model.load_state_dict(state)


def load_model(source: str | Path, *, learner: str = "global", checkpoint: str = "auto", weights: str = "model",
               architecture: str | None = None, dataset: str | None = None) -> ModelSource:
    """The model to evaluate from a run folder, a checkpoint folder or a bare `.pt` state_dict.

    Run folder: the global learner from final/global.pt (checkpoint "auto" or "final"), else
    checkpoints/last (or "best", "last"); a base learner (learner=NAME) from checkpoints/last, its trained
    weights (weights "model") or its EMA ("ema"). A bare .pt needs architecture and dataset unless it sits in
    RUN/final/ or RUN/checkpoints/*/. architecture / dataset given with a run override nothing: they are
    checked against the run's config."""
    from generalist import checkpoint as ckpt
    from generalist.config import load_run_config

    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run folder, a checkpoint folder or a .pt file")
    # RUN, RUN/final, RUN/final/global.pt, RUN/checkpoints/last, RUN/checkpoints/last/global.pt
    run_dir = next((c for c in (path, *list(path.parents)[:3]) if (c / "config.json").is_file()), None)
    config = load_run_config(run_dir) if run_dir is not None else None
    if config is not None:
        for label, given, own in (("--arch", architecture, config.model.name),
                                  ("--dataset", dataset, config.data.dataset)):
            if given is not None and given != own:
                raise CheckpointError(f"{label} {given} contradicts the run's config ({own}) in {run_dir}")
        architecture, dataset = config.model.name, config.data.dataset
    if architecture is None or dataset is None:
        raise ConfigError(f"{path} is not inside a run folder: pass --arch and --dataset")
    if config is not None and learner != "global" and learner not in config.learner_names:
        raise ConfigError(f"run {run_dir} has no learner {learner!r}; its learners: "
                          f"{', '.join(config.learner_names)} (or global)")
    if weights not in ("model", "ema"):
        raise ConfigError(f"weights must be model or ema, got {weights!r}")
    model, kwargs = build_eval_model(architecture, dataset)

    if path.is_file():
        state = ckpt.load_state_dict_file(path)
        if isinstance(state, dict) and "state" in state and isinstance(state["state"], dict):
            state = state["state"]  # a checkpoint payload rather than a bare state_dict
        elif isinstance(state, dict) and weights in state and isinstance(state[weights], dict):
            state = state[weights]
        file = path
    else:
        folder, file, state = path, None, None
        if (path / "config.json").is_file():  # a run folder
            if learner == "global" and checkpoint in ("auto", "final") and (path / "final" / "global.pt").is_file():
                file = path / "final" / "global.pt"
                state = ckpt.load_state_dict_file(file)
            else:
                which = "last" if checkpoint in ("auto", "final") else checkpoint
                if which not in ("last", "best"):
                    raise ConfigError(f"checkpoint must be auto, final, last or best, got {checkpoint!r}")
                if checkpoint == "final" and learner == "global":
                    raise CheckpointError(f"{path} has no final/global.pt: the run did not finish; "
                                          "use --checkpoint last")
                folder = path / "checkpoints" / which
        if state is None:
            found = ckpt.find_checkpoint(folder)
            if found is None:
                raise CheckpointError(f"{folder} holds no complete checkpoint")
            name = "global" if learner == "global" else f"learner-{learner}"
            payload = ckpt.load_payload(found, name)
            file = found / f"{name}.pt"
            state = payload["state"] if learner == "global" else payload[weights]
    load_weights(model, state, str(file), architecture)
    model.eval()
    return ModelSource(model, learner, architecture, dataset, str(file), str(run_dir) if run_dir else None,
                       config, kwargs)
