"""Named recipes: functions returning a RunConfig. Variants derive from a base by changing fields.

Paper scale follows PAPER.md (ResNet-18, CIFAR-10, 120 epochs, batch 128, SGD momentum 0.9, lr 0.01,
weight decay 3.5e-3 for adversarial learners and 5e-4 for the natural one). The `-small` recipes run the
same algorithm on a laptop CPU: a small CNN, a subset of CIFAR-10, fewer epochs, a shorter training PGD,
and schedule fractions kept (mixing from 2/3 of training, redistribution from 75/120).

Recipes live in the library (not in jobs/) so that the installed `generalist` command finds them on any
machine, the Ray workers of a cluster included; jobs/ names them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import replace

from generalist.config import (AttackConfig, DataConfig, EvalConfig, LearnerConfig, MixingConfig, ModelConfig,
                               RunConfig, ScheduleConfig)
from generalist.errors import ConfigError

LINF = AttackConfig(norm="Linf", eps=8 / 255, step_size=2 / 255, steps=10)
L2 = AttackConfig(norm="L2", eps=0.5, step_size=0.125, steps=10)  # step eps/4 (PAPER.md)
L1 = AttackConfig(norm="L1", eps=12.0, step_size=1.0, steps=10)  # optional third norm for MN

# The reference's learners (PAPER.md): same lr and schedule, weight decay per objective.
NATURAL = LearnerConfig(name="natural", lr=0.01, weight_decay=5e-4)
ADV_LINF = LearnerConfig(name="linf", attack=LINF, lr=0.01, weight_decay=3.5e-3)
ADV_L2 = LearnerConfig(name="l2", attack=L2, lr=0.01, weight_decay=3.5e-3)


def _learners(*learners: LearnerConfig, weights: list[float]) -> list[LearnerConfig]:
    return [replace(learner, final_weight=w) for learner, w in zip(learners, weights)]


def paper_base(recipe: str, learners: list[LearnerConfig], anchor: str) -> RunConfig:
    return RunConfig(recipe=recipe, data=DataConfig(dataset="cifar10", batch_size=128, val_size=1000),
                     model=ModelConfig(name="resnet18"), learners=learners,
                     schedule=ScheduleConfig(epochs=120), mixing=MixingConfig(anchor=anchor),
                     eval=EvalConfig(n_examples=1000, pgd_steps=20))


def natural() -> RunConfig:
    return paper_base("natural", _learners(NATURAL, weights=[1.0]), "natural")


def pgd_at() -> RunConfig:
    """PGD-AT with the Generalist AT learner's hyper-parameters, so only the mixing differs from D."""
    return paper_base("pgd-at", _learners(ADV_LINF, weights=[1.0]), "linf")


def generalist_d() -> RunConfig:
    """Natural + Linf-AT; gamma moves from (AT 1, natural 0) to (0.4, 0.6) over the last third [code]."""
    return paper_base("generalist-d", _learners(ADV_LINF, NATURAL, weights=[0.4, 0.6]), "linf")


def generalist_mn() -> RunConfig:
    """Linf-AT + L2-AT, equal final weights [ours]."""
    return paper_base("generalist-mn", _learners(ADV_LINF, ADV_L2, weights=[0.5, 0.5]), "linf")


def generalist_t() -> RunConfig:
    """Natural + Linf-AT + L2-AT, equal final weights [ours]."""
    return paper_base("generalist-t", _learners(ADV_LINF, NATURAL, ADV_L2, weights=[1 / 3, 1 / 3, 1 / 3]), "linf")


def small(config: RunConfig) -> RunConfig:
    """The same algorithm at CPU scale: small CNN, 8k CIFAR-10 images, 8 epochs, PGD-5 in training.


    Changed from paper scale, and why: lr 0.05 (a small CNN with BN trains faster at a higher lr in 8 epochs),
    training PGD 5 steps of 2.5 * eps / 5 (half the cost; Madry et al.'s step rule), redistribution every 2
    epochs (E=8 has too few epochs for every 5), validation on 500 points."""
    def shrink(learner: LearnerConfig) -> LearnerConfig:
        def short(attack: AttackConfig | None) -> AttackConfig | None:
            if attack is None:
                return None
            return replace(attack, steps=5, step_size=2.5 * attack.eps / 5)  # Madry's 2.5 * eps / steps
        return replace(learner, lr=0.05, attack=short(learner.attack),
                       extra_attacks=[short(a) for a in learner.extra_attacks])

    return replace(config, recipe=config.recipe + "-small",
                   data=replace(config.data, train_subset=8000, val_size=500),
                   model=ModelConfig(name="small-cnn"),
                   learners=[shrink(learner) for learner in config.learners],
                   schedule=replace(config.schedule, epochs=8),
                   mixing=replace(config.mixing, redistribute_every=2),
                   eval=replace(config.eval, n_examples=500, pgd_steps=20))


PAPER_RECIPES: dict[str, Callable[[], RunConfig]] = {
    "natural": natural,
    "pgd-at": pgd_at,
    "generalist-d": generalist_d,
    "generalist-mn": generalist_mn,
    "generalist-t": generalist_t,
}


def recipe_names() -> list[str]:
    return sorted(list(PAPER_RECIPES) + [f"{name}-small" for name in PAPER_RECIPES])


def get_recipe(name: str) -> RunConfig:
    """The config of a named recipe; `NAME-small` is the CPU-scale variant of `NAME`."""
    base = name[: -len("-small")] if name.endswith("-small") else name
    if base not in PAPER_RECIPES:
        close = difflib.get_close_matches(name, recipe_names(), n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown recipe {name!r}{hint}; recipes: {', '.join(recipe_names())}")
    config = PAPER_RECIPES[base]()
    return small(config) if name.endswith("-small") else config
