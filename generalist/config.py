"""Run configuration: nested dataclasses validated on creation, plus `a.b=value` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from generalist.errors import ConfigError, RunFolderError

DATASET_NAMES = ("cifar10", "mnist", "fashion-mnist", "synthetic-cifar10")
MODEL_NAMES = ("small-cnn", "small-cnn-wide", "resnet18", "preact-resnet18", "wrn-28-10", "wrn-34-10")
NORMS = ("none", "Linf", "L2", "L1")
OBJECTIVES = ("ce", "trades", "avg", "max", "msd", "e-at")
PRECISIONS = ("fp32", "bf16")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(f"{name}={value!r} is not valid{hint}; choose one of {', '.join(choices)}")


@dataclass(kw_only=True)
class DataConfig:
    dataset: str = "cifar10"
    root: str | None = None  # None: $GENERALIST_DATA
    download: bool = False  # torchvision download into root (needs internet)
    train_subset: int | None = None  # first n training examples after the validation split
    val_size: int = 1000  # held out of the training set for model selection, never the test set
    batch_size: int = 128
    augment: bool | None = None  # RandomCrop(pad 4) + flip per (epoch, step); None: on for CIFAR-10 only

    @property
    def use_augmentation(self) -> bool:
        """Crop + horizontal flip suit CIFAR-10; a flipped digit is another digit, so MNIST-like sets default off."""
        return self.augment if self.augment is not None else self.dataset == "cifar10"

    def __post_init__(self) -> None:
        _choice("data.dataset", self.dataset, DATASET_NAMES)
        _check(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")
        _check(self.val_size >= 0, f"data.val_size must be >= 0, got {self.val_size}")
        _check(
            self.train_subset is None or self.train_subset >= self.batch_size,
            f"data.train_subset={self.train_subset} must be >= data.batch_size={self.batch_size} (or null for all)",
        )


@dataclass(kw_only=True)
class ModelConfig:
    name: str = "resnet18"

    def __post_init__(self) -> None:
        _choice("model.name", self.name, MODEL_NAMES)


@dataclass(kw_only=True)
class AttackConfig:
    """A PGD threat: the training attack of a learner or an evaluation attack."""

    norm: str = "Linf"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True

    def __post_init__(self) -> None:
        _choice("attack.norm", self.norm, NORMS[1:])
        _check(
            math.isfinite(self.eps) and self.eps > 0,
            f"attack eps must be > 0, got {self.eps} (write it as a fraction, e.g. eps=8/255)",
        )
        _check(
            math.isfinite(self.step_size) and self.step_size > 0,
            f"attack step_size must be > 0, got {self.step_size} (e.g. step_size=2/255)",
        )
        _check(self.steps >= 1, f"attack steps must be >= 1, got {self.steps}")


@dataclass(kw_only=True)
class LearnerConfig:
    """One base learner: its objective, its optimiser and its final mixing weight."""

    name: str
    objective: str = "ce"  # "ce" on clean x when attack is None, else CE on attack points
    attack: AttackConfig | None = None
    extra_attacks: list[AttackConfig] = field(default_factory=list)  # multi-norm objectives (avg, max, msd, e-at)
    trades_beta: float = 6.0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    final_weight: float = 1.0  # gamma_k at the end of training; the weights of a run sum to 1

    def __post_init__(self) -> None:
        _check(bool(re.fullmatch(r"[a-z0-9][a-z0-9_-]*", self.name)),
               f"learner name {self.name!r} must be lower-case letters, digits, '-' or '_'")
        _choice(f"learners.{self.name}.objective", self.objective, OBJECTIVES)
        _check(math.isfinite(self.lr) and self.lr > 0, f"learners.{self.name}.lr must be > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, f"learners.{self.name}.momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"learners.{self.name}.weight_decay must be >= 0, got {self.weight_decay}")
        _check(0 <= self.final_weight <= 1,
               f"learners.{self.name}.final_weight must be in [0, 1], got {self.final_weight}")
        if self.objective == "trades":
            _check(not self.extra_attacks,
                   f"learners.{self.name}: objective 'trades' attacks with `attack` only; remove extra_attacks")
            _check(math.isfinite(self.trades_beta) and self.trades_beta >= 0,
                   f"learners.{self.name}.trades_beta must be >= 0 (TRADES uses 6), got {self.trades_beta}")
        if self.objective == "ce":
            _check(not self.extra_attacks,
                   f"learners.{self.name}: objective 'ce' trains on `attack` only; extra_attacks need objective "
                   "avg, max, msd or e-at")
        else:
            _check(self.attack is not None, f"learners.{self.name}: objective {self.objective!r} needs an attack")
        if self.objective in ("avg", "max", "msd", "e-at"):
            _check(len(self.extra_attacks) >= 1,
                   f"learners.{self.name}: objective {self.objective!r} needs extra_attacks (a second threat)")

    @property
    def threats(self) -> list[AttackConfig]:
        return ([self.attack] if self.attack else []) + list(self.extra_attacks)


@dataclass(kw_only=True)
class ScheduleConfig:
    """Epoch budget, the piecewise-linear lr schedule, and the clock every schedule is read on.

    Every schedule (lr, mixing weights, communication epochs, the EMA horizon) is a function of a 1-based
    *clock epoch*. By default the clock is the data epoch, as in the reference. With `clock_epochs = C` the
    run's optimiser steps are cut into C equal slices and each slice is one clock epoch standing for one
    reference epoch of `reference_steps_per_epoch` steps; the EMAs' maximum decay is rescaled so that their
    horizon is the same share of training as the reference's (generalist.mixing.ema_max_decay). A 30-epoch run
    with C = 120 then keeps every ratio of the 120-epoch paper schedule in optimiser steps (docs/mixing.md)."""

    epochs: int = 120
    lr_knots: list[float] = field(default_factory=lambda: [0.0, 1 / 3, 2 / 3, 1.0])  # fractions of training
    lr_factors: list[float] = field(default_factory=lambda: [1.0, 1.0, 0.1, 0.01])  # times each learner's lr
    clock_epochs: int | None = None  # None: the clock is the data epoch; C: C equal slices of the optimiser steps
    reference_steps_per_epoch: int = 391  # steps of one reference epoch (CIFAR-10, batch 128): rescales the EMA

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"schedule.epochs must be >= 1, got {self.epochs}")
        _check(len(self.lr_knots) == len(self.lr_factors) >= 2,
               "schedule.lr_knots and schedule.lr_factors must have the same length (>= 2)")
        _check(all(a < b for a, b in zip(self.lr_knots, self.lr_knots[1:])),
               "schedule.lr_knots must be strictly increasing fractions of training")
        _check(all(f >= 0 for f in self.lr_factors), "schedule.lr_factors must be >= 0")
        _check(self.clock_epochs is None or self.clock_epochs >= 1,
               f"schedule.clock_epochs must be >= 1 (or null for the data epochs), got {self.clock_epochs}")
        _check(self.reference_steps_per_epoch >= 1,
               f"schedule.reference_steps_per_epoch must be >= 1, got {self.reference_steps_per_epoch}")

    @property
    def clock_length(self) -> int:
        """How many clock epochs a run has: clock_epochs, else its data epochs."""
        return self.clock_epochs if self.clock_epochs is not None else self.epochs


@dataclass(kw_only=True)
class MixingConfig:
    """How the global learner is made: gamma schedule, global EMA, redistribution, sync period."""

    anchor: str = ""  # learner whose weight is 1 before mix_start; "" = the first learner
    mix_start: float = 2 / 3  # fraction of training where gamma starts moving to the final weights
    redistribute: bool = True
    redistribute_start: float = 75 / 120  # fraction of training; first communication epoch >= this
    redistribute_every: int = 5  # epochs: an epoch e is a communication epoch when e % this == 0
    sync_every: int = 1  # optimiser steps between syncs (each epoch end is a sync too)
    ema_max_decay: float = 0.999  # d = min(max_decay, (s + 1) / (s + 10)); rescaled on a step clock
    # The global learner's BatchNorm running statistics. interpolate: averaged like weights, as the reference
    # does (and redistributed with them). reestimate: recomputed from `bn_batches` training batches wherever
    # the global learner is evaluated or saved (validation, final/global.pt, `generalist eval`), and the
    # learners keep their own statistics at redistribution (generalist.bn_stats).
    global_bn: str = "interpolate"
    bn_batches: int = 100

    def __post_init__(self) -> None:
        _check(0 <= self.mix_start <= 1, f"mixing.mix_start must be in [0, 1], got {self.mix_start}")
        _check(0 <= self.redistribute_start <= 1,
               f"mixing.redistribute_start must be in [0, 1], got {self.redistribute_start}")
        _check(self.redistribute_every >= 1, f"mixing.redistribute_every must be >= 1, got {self.redistribute_every}")
        _check(self.sync_every >= 1, f"mixing.sync_every must be >= 1, got {self.sync_every}")
        _check(0 <= self.ema_max_decay < 1, f"mixing.ema_max_decay must be in [0, 1), got {self.ema_max_decay}")
        _choice("mixing.global_bn", self.global_bn, ("interpolate", "reestimate"))
        _check(self.bn_batches >= 1, f"mixing.bn_batches must be >= 1, got {self.bn_batches}")


@dataclass(kw_only=True)
class EvalConfig:
    """Per-epoch evaluation of every learner and the global learner on the validation split."""

    every_epochs: int = 1
    n_examples: int = 1000  # validation points per evaluation (<= data.val_size)
    batch_size: int = 256
    pgd_steps: int = 20  # PGD-20 against each learner's training threat (Linf when it has none)
    select_on: str = "val_pgd"  # what "best" means: val_pgd (clean + pgd, ties broken by pgd) | val_clean

    def __post_init__(self) -> None:
        _check(self.every_epochs >= 1, f"eval.every_epochs must be >= 1, got {self.every_epochs}")
        _check(self.n_examples >= 0, f"eval.n_examples must be >= 0, got {self.n_examples}")
        _check(self.pgd_steps >= 1, f"eval.pgd_steps must be >= 1, got {self.pgd_steps}")
        _choice("eval.select_on", self.select_on, ("val_pgd", "val_clean"))


@dataclass(kw_only=True)
class RuntimeConfig:
    """Where and how fast the learners run. Only `precision` (and `deterministic`) changes a run's numbers;
    the rest changes its speed, or at most the rounding order, as moving to another device does."""

    backend: str = "ray"  # ray: one actor per learner; local: all learners in this process
    device: str = "auto"  # auto | cpu | cuda
    cpus_per_learner: float = 1.0
    # None = auto (generalist.distributed.placement): one GPU per learner when the cluster has K, a share of
    # them when it has fewer, none without GPUs. 1 = one dedicated GPU per learner; fractions share a GPU.
    gpus_per_learner: float | None = None
    # The speed of a learner's step (docs/performance.md says what each costs in accuracy):
    precision: str = "fp32"  # fp32 | bf16: torch.autocast bf16 for the attack's and training's passes
    channels_last: bool | None = None  # model and inputs in channels-last memory format; None: on CUDA only
    data_on_device: bool | None = None  # training split held on the learner's device; None: on CUDA only
    compile: bool = False  # torch.compile the model (first steps pay the compilation)
    # Record a learner's step as a CUDA graph and replay it (generalist.graph_step): CUDA, plain or PGD
    # cross-entropy learners, not with compile or deterministic kernels; elsewhere the eager step runs.
    cuda_graph: bool = False
    # Each learner's rounds on a CUDA stream of its own, so that learners sharing a GPU in one process overlap there
    # (generalist.learner.run_round); CUDA only. The same kernels on each learner's tensors: no number moves. Off
    # until a GPU has run it (benchmarks/gpu_check.py part g measures it with cuda_graph).
    learner_streams: bool = False
    # Learners per Ray worker process. None = automatic (generalist.distributed.placement.resolve_grouping): the
    # learners that share a GPU share one worker, which trains them one after another with no context switch
    # between processes and mixes them with a device-local fold; otherwise one worker per learner. The numbers
    # are the same either way (the same fold, in learner order).
    learners_per_worker: int | None = None
    placement: str = "PACK"  # PACK | SPREAD
    threads_per_learner: int = 0  # torch intra-op threads per learner; 0 = from cpus_per_learner (at least 1)
    # Deterministic kernels: bit-exact resume and backend parity. None: on for CPUs (it costs nothing there),
    # off on GPUs, where it turns cuDNN's autotuner off and forces slow deterministic kernels (its price in
    # time: docs/performance.md); true asks for bit-exact GPU runs.
    deterministic: bool | None = None
    checkpoint_every_rounds: int = 0  # 0 = at every epoch end only
    max_failures: int = 2  # learner-group restarts from the last checkpoint
    sync_timeout_s: float = 600.0  # a learner that does not reach a sync in this time is reported hung
    wait_for_resources_s: float = 0.0  # an autoscaling cluster may add GPU nodes: wait this long before failing

    def use_deterministic(self, device_type: str) -> bool:
        return self.deterministic if self.deterministic is not None else device_type != "cuda"

    def use_channels_last(self, device_type: str) -> bool:
        """Channels-last pays on CUDA (tensor-core convolutions want NHWC); on CPU it only changes rounding."""
        return self.channels_last if self.channels_last is not None else device_type == "cuda"

    def use_data_on_device(self, device_type: str) -> bool:
        """Batches are bit-identical either way; holding the split on a GPU saves a host-to-device copy a step."""
        return self.data_on_device if self.data_on_device is not None else device_type == "cuda"

    @property
    def threads(self) -> int:
        """Intra-op threads of each learner: set, or the CPUs Ray gives it, so co-located actors do not
        fight over cores. Part of determinism on CPU: reductions split differently over more threads."""
        return self.threads_per_learner or max(1, int(self.cpus_per_learner))

    def __post_init__(self) -> None:
        _choice("runtime.backend", self.backend, ("ray", "local"))
        _choice("runtime.device", self.device, ("auto", "cpu", "cuda"))
        _choice("runtime.placement", self.placement, ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
        _check(self.cpus_per_learner > 0, f"runtime.cpus_per_learner must be > 0, got {self.cpus_per_learner}")
        _check(self.gpus_per_learner is None or self.gpus_per_learner >= 0,
               f"runtime.gpus_per_learner must be >= 0 (or null for automatic), got {self.gpus_per_learner}")
        _check(self.gpus_per_learner is None or self.gpus_per_learner <= 1 or self.gpus_per_learner == int(
            self.gpus_per_learner), f"runtime.gpus_per_learner={self.gpus_per_learner} above 1 must be a whole "
               "number of GPUs (Ray refuses fractions above 1); use 1, 2, ... or a fraction <= 1")
        _choice("runtime.precision", self.precision, PRECISIONS)
        _check(self.learners_per_worker is None or self.learners_per_worker >= 1,
               f"runtime.learners_per_worker must be >= 1 (or null for automatic), got {self.learners_per_worker}")
        _check(self.threads_per_learner >= 0, "runtime.threads_per_learner must be >= 0 (0 = from cpus_per_learner)")
        _check(self.checkpoint_every_rounds >= 0, "runtime.checkpoint_every_rounds must be >= 0")
        _check(self.sync_timeout_s > 0, "runtime.sync_timeout_s must be > 0")


@dataclass(kw_only=True)
class RunConfig:
    recipe: str = "custom"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    learners: list[LearnerConfig] = field(default_factory=list)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        _check(len(self.learners) >= 1, "a run needs at least one learner (learners=[...])")
        names = [learner.name for learner in self.learners]
        _check(len(set(names)) == len(names), f"learner names must be unique, got {names}")
        if not self.mixing.anchor:
            self.mixing.anchor = names[0]
        _choice("mixing.anchor", self.mixing.anchor, tuple(names))
        total = sum(learner.final_weight for learner in self.learners)
        _check(abs(total - 1.0) <= 1e-6,
               f"the learners' final_weight values must sum to 1, got {total:.6g} "
               f"({', '.join(f'{n}={l.final_weight:.4g}' for n, l in zip(names, self.learners))})")
        _check(self.eval.n_examples <= self.data.val_size,
               f"eval.n_examples={self.eval.n_examples} exceeds data.val_size={self.data.val_size}; "
               "lower eval.n_examples or raise data.val_size")

    @property
    def learner_names(self) -> list[str]:
        return [learner.name for learner in self.learners]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _build(cls, data, "")

    def fingerprint(self) -> dict[str, Any]:
        """The fields that decide the numbers of a run: a checkpoint from another fingerprint is refused.

        Runtime placement, epochs-to-go, evaluation cadence and where the (checksum-verified) dataset files
        live may change on resume; the rest may not. Of the speed settings only precision is in: channels-last,
        data on the device and compile change at most the rounding order (as the device does), not the math."""
        d = self.to_dict()
        d.pop("runtime")
        d.pop("eval")
        d["data"].pop("root")
        d["data"].pop("download")
        # Determinism changes no math, only whether the bits repeat: a run resumes under either setting. It is
        # kept as the bool it was before `None` (automatic) existed, so earlier checkpoints keep resuming.
        d["runtime"] = {"deterministic": self.runtime.deterministic is not False}
        # bf16 changes every number of a run, so it is part of the fingerprint. fp32 is recorded as absence:
        # checkpoints written before the field existed (all fp32) keep resuming.
        if self.runtime.precision != "fp32":
            d["runtime"]["precision"] = self.runtime.precision
        # The same for the step clock and BatchNorm re-estimation: at their reference values they are absent,
        # so checkpoints written before these fields existed keep resuming.
        if self.schedule.clock_epochs is None:
            d["schedule"].pop("clock_epochs")
            d["schedule"].pop("reference_steps_per_epoch")
        if self.mixing.global_bn == "interpolate":
            d["mixing"].pop("global_bn")
            d["mixing"].pop("bn_batches")
        return d


# --- building dataclasses from plain data, refusing unknown keys --------------------------------


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(_join(where, c) for c in close)}?" if close else ""
        raise ConfigError(
            f"unknown config key {_join(where, key)!r}{hint} (valid keys here: {', '.join(fields)})")
    kwargs = {name: _convert(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field is missing
        raise ConfigError(f"{where or 'config'}: {error}") from None
    except ConfigError as error:  # say where a nested section's check failed, e.g. learners.linf.attack
        if where and not str(error).startswith(where.split(".")[0]):
            raise ConfigError(f"{where}: {error}") from None
        raise


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Union or type(tp).__name__ == "UnionType":
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _build(tp, value, where)
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        # Name items by their `name` where they have one (learners.linf.attack): overrides accept that spelling.
        return [_convert(item, v, f"{where}.{v['name'] if isinstance(v, dict) and v.get('name') else i}")
                for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


# --- overrides: `a.b=value`, learners addressed by name or index ---------------------------------


def parse_value(text: str) -> Any:
    """`8/255` -> 0.0313..., `true` -> True, `null` -> None, `[1, 2]` -> list, else number or string."""
    text = text.strip()
    if re.fullmatch(r"-?\d+(\.\d*)?(e-?\d+)?\s*/\s*-?\d+(\.\d*)?", text):
        num, den = (t.strip() for t in text.split("/"))
        if float(den) == 0:
            raise ConfigError(f"division by zero in {text!r}")
        return float(Fraction(num) / Fraction(den)) if "e" not in num else float(num) / float(den)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Return a new validated config with each `dotted.key=value` applied in order."""
    data = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. schedule.epochs=10")
        key, text = item.split("=", 1)
        _set(data, key.strip().split("."), parse_value(text), key.strip(), [])
    return RunConfig.from_dict(data)


def _set(node: Any, path: list[str], value: Any, full: str, above: list[str]) -> None:
    head, rest = path[0], path[1:]
    if isinstance(node, list):
        index = _list_index(node, head, full)
        if not rest:
            node[index] = value
        else:
            _set(node[index], rest, value, full, [*above, head])
        return
    if head not in node:
        close = difflib.get_close_matches(head, list(node), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr('.'.join([*above, c])) for c in close)}?" if close else ""
        raise ConfigError(f"unknown config key {full!r}{hint} (valid here: {', '.join(node)})")
    if not rest:
        node[head] = value
    elif node[head] is None:
        raise ConfigError(f"{full!r}: {head} is null here; set the whole {head} instead")
    else:
        _set(node[head], rest, value, full, [*above, head])


def _list_index(items: list, key: str, full: str) -> int:
    if key.isdigit() and int(key) < len(items):
        return int(key)
    names = [item.get("name") for item in items if isinstance(item, dict)]
    if key in names:
        return names.index(key)
    raise ConfigError(f"{full!r}: no learner {key!r}; learners are {', '.join(map(str, names))} (or 0..{len(items) - 1})")


def load_run_config(run_dir) -> RunConfig:
    """The config.json of the run folder `run_dir` (a path or a generalist.storage Location), validated."""
    path = run_dir / "config.json" if not isinstance(run_dir, str) else Path(run_dir) / "config.json"
    try:
        return RunConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise RunFolderError(f"{run_dir} has no config.json: it is not a run folder") from None
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path} is corrupt: {error}") from None
