"""Named recipes: functions returning a RunConfig. Variants derive from a base by changing fields.

Paper scale follows PAPER.md (ResNet-18, CIFAR-10, 120 epochs, batch 128, SGD momentum 0.9, lr 0.01,
weight decay 3.5e-3 for adversarial learners and 5e-4 for the natural one). The `-small` and `-cpu` recipes
run the same algorithm on a CPU: a small CNN, fewer epochs, a shorter training PGD, and the paper's schedule
kept in optimiser steps (a clock of 120 equal slices of the run's steps; see `small`).

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
# Step 2.5 * eps / steps (Madry et al.'s rule, as `small()` uses): 10 steps of 1.0 could not reach eps = 12.
L1 = AttackConfig(norm="L1", eps=12.0, step_size=3.0, steps=10)  # third norm of msd and e-at; optional for MN

# The reference's learners (PAPER.md): same lr and schedule, weight decay per objective.
NATURAL = LearnerConfig(name="natural", lr=0.01, weight_decay=5e-4)
ADV_LINF = LearnerConfig(name="linf", attack=LINF, lr=0.01, weight_decay=3.5e-3)
ADV_L2 = LearnerConfig(name="l2", attack=L2, lr=0.01, weight_decay=3.5e-3)


PAPER_EPOCHS = 120  # the paper's schedule length: the clock the CPU-scale recipes keep in optimiser steps


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


# --- baselines in the same framework ---------------------------------------------------------------
#
# Every baseline is one learner with the budget and optimiser of pgd-at -- ResNet-18, 120 epochs, batch 128, SGD
# momentum 0.9, lr 0.01 on the same piecewise schedule, weight decay 3.5e-3 (the Generalist AT learner, PAPER.md)
# -- and the threats of PAPER.md (Linf 8/255 and L2 0.5 with PGD-10 of step eps/4, L1 12 with PGD-10 of step
# 2.5 * eps / 10), so that a comparison with generalist-* changes only the objective [ours]. The authors'
# own hyper-parameters are listed in each docstring; they are an override away, e.g.
#   generalist train --recipe trades learners.trades.lr=0.1 learners.trades.weight_decay=2e-4
# A multi-norm recipe's threats are `attack` + `extra_attacks`; add L1 to avg or max with
#   'learners.avg.extra_attacks=[{"norm": "L2", "eps": 0.5, "step_size": 0.125}, {"norm": "L1", "eps": 12, "step_size": 3}]'


def _baseline(name: str, objective: str, attack: AttackConfig, extra: list[AttackConfig] | None = None,
              **fields) -> LearnerConfig:
    return replace(ADV_LINF, name=name, objective=objective, attack=attack, extra_attacks=list(extra or []),
                   final_weight=1.0, **fields)


def trades() -> RunConfig:
    """TRADES (Zhang et al. 2019): CE(f(x), y) + 6 * KL(f(x) || f(x')), x' the KL-maximising Linf-PGD point.

    Ours: beta 6, Linf 8/255, 10 steps of 2/255 from x + 0.001 * N(0, 1), the attack in eval mode.
    Authors (yaodongyu/TRADES, trades.py and train_trades_cifar10.py of the released version): beta 6,
    eps 0.031, 10 steps of 0.007, same start and modes; WRN-34-10, SGD lr 0.1, momentum 0.9, weight decay
    2e-4, batch 128, 76 epochs with lr / 10 at epoch 75. We take the eps and step of PAPER.md and the
    optimiser, architecture and schedule of pgd-at (see above)."""
    return paper_base("trades", [_baseline("trades", "trades", LINF, trades_beta=6.0)], "trades")


def avg() -> RunConfig:
    """AVG (Tramer & Boneh 2019): mean CE over the Linf- and L2-PGD points of each batch, one step.

    Authors (ftramer/MultiRobustness, default multi-attack mode): the per-threat PGD points are concatenated
    into one batch for one optimiser step; CIFAR-10 with a wide ResNet, SGD lr 0.1 (/10 at 40k and 60k of 80k
    steps), momentum 0.9, weight decay 2e-4, batch 128. Linf + L2 here, to compare with generalist-mn
    [ours]; L1 can be added (module comment)."""
    return paper_base("avg", [_baseline("avg", "avg", LINF, [L2])], "avg")


def max_() -> RunConfig:
    """MAX (Tramer & Boneh 2019; "worst-case" in Maini et al. 2020): per example, CE at the PGD point of the
    threat with the highest loss (chosen in eval mode, as the authors' code), Linf + L2.

    Authors: same setting as avg (Tramer & Boneh); Maini et al. (locuslab/robust_union CIFAR10/train.py)
    train PreAct ResNet-18 for 50 epochs, SGD momentum 0.9, weight decay 5e-4, lr 0 -> 0.1 -> 0.005 -> 0,
    with Linf 0.03, L2 0.3 and L1 12 in training."""
    return paper_base("max", [_baseline("max", "max", LINF, [L2])], "max")


def msd_() -> RunConfig:
    """MSD (Maini, Wong & Kolter 2020): PGD over the union of the Linf, L2 and L1 balls; at every step each
    norm proposes its step and each example keeps the one with the highest loss.

    Ours: 10 MSD steps from delta = 0 (random_start false, as the authors' msd_v0), each norm with its
    PAPER.md eps and PGD-10 step size. Authors (locuslab/robust_union): 50 steps, eps Linf 0.03 / L2 0.3 in
    training / L1 12, steps 0.005 / 0.05 / 0.05 over 5 to 20 top coordinates, PreAct ResNet-18, 50 epochs,
    SGD momentum 0.9, weight decay 5e-4, lr 0 -> 0.1 -> 0.005 -> 0. Our L1 step moves the top 5% of
    coordinates (generalist.threat.L1Threat)."""
    threats = [replace(a, random_start=False) for a in (LINF, L2, L1)]
    return paper_base("msd", [_baseline("msd", "msd", threats[0], threats[1:])], "msd")


def e_at() -> RunConfig:
    """E-AT (Croce & Hein 2022): each batch trains on the PGD points of Linf or L1 (the extreme norms), drawn
    uniformly from the learner's generator.

    Authors (fra31/robust-finetuning train.py): the norm of each batch is drawn with weights 1 - running robust
    training accuracy per norm (uniform until both have been seen; we keep uniform, see baselines.eat_loss),
    APGD training attack, PreAct ResNet-18, SGD momentum 0.9, weight decay 5e-4 (none on BN and biases),
    default lr 0.01 piecewise. We attack with PGD-10 like every other recipe."""
    return paper_base("e-at", [_baseline("e-at", "e-at", LINF, [L1])], "e-at")


def small(config: RunConfig) -> RunConfig:
    """The same algorithm at CPU scale: small CNN, 8k CIFAR-10 images, 8 epochs, PGD-5 in training.

    Changed from paper scale, and why: lr 0.05 (a small CNN with BN trains faster at a higher lr in 8 epochs),
    training PGD 5 steps of 2.5 * eps / 5 (half the cost; Madry et al.'s step rule), validation on 500 points.
    The baselines shrink the same way: every threat of a learner, extra_attacks included, gets PGD-5 (Linf
    4/255, L2 0.25, L1 6 a step; MSD runs 5 steps), and they share the lr 0.05; TRADES keeps beta 6.

    Kept from paper scale in optimiser steps, not only in epochs: every schedule runs on a clock of 120 equal
    slices of the run's steps (`schedule.clock_epochs`), so lr, gamma, the communication windows (every 5th
    clock epoch from 75) and the EMA horizon (its maximum decay rescaled to the same share of training) keep
    the paper's ratios at any length (docs/mixing.md, "A schedule clock faithful in steps"). The global
    learner's BatchNorm statistics are re-estimated from data (`mixing.global_bn=reestimate`; the paper-scale
    recipes keep the reference's interpolation)."""
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
                   schedule=replace(config.schedule, epochs=8, clock_epochs=PAPER_EPOCHS),
                   mixing=replace(config.mixing, global_bn="reestimate"),
                   eval=replace(config.eval, n_examples=500, pgd_steps=20))


def cpu(config: RunConfig) -> RunConfig:
    """The same algorithm at the largest scale that converges on a CPU: the full CIFAR-10 training split, 30
    epochs, a CNN of 147k parameters. For the converged reproduction study (benchmarks/accuracy/protocol.py
    --scale cpu); one generalist-d run takes about 50 minutes of one core.

    Changed from paper scale, and why: `small-cnn-wide` instead of ResNet-18 (the widest CNN for which a
    generalist-d run fits 45 minutes of one core; ResNet-18 needs about 23 s per PGD step there); 30 epochs
    instead of 120 (PGD-AT's validation accuracy has stopped rising by then; the pilot's curves are in
    benchmarks/results/accuracy/converged/); training PGD 5 steps of 2.5 * eps / 5 and lr 0.05, as `-small`
    (the step rule and lr that train this CNN family fast); 2,000 validation points, all scored with PGD-10
    every 2nd epoch, so that best-on-validation is chosen with a standard error of about 1 point.

    Kept, as in `small`: the paper's schedule in optimiser steps (a clock of 120 slices of the 11,250 steps:
    mixing from clock epoch 80, communication at 75, 80, ..., 120, the EMA's maximum decay 0.99583 for the
    paper's 2.1 % horizon) and re-estimated BatchNorm statistics for the global learner. The study's first
    `-cpu` runs kept the paper's fractions in data epochs instead (communication at epochs 15/20, 25, 30, the
    EMA at 0.999) and interpolated the statistics; their results are kept as the "epoch clock" variant
    (benchmarks/results/accuracy/converged/README.md). The overrides `schedule.clock_epochs=null
    mixing.global_bn=interpolate` reproduce them, with `mixing.redistribute_start=0.5` for the Generalist ones.
    """
    config = small(config)
    return replace(config, recipe=config.recipe[: -len("-small")] + "-cpu",
                   data=replace(config.data, train_subset=None, val_size=2000),
                   model=ModelConfig(name="small-cnn-wide"),
                   schedule=replace(config.schedule, epochs=30),
                   eval=replace(config.eval, every_epochs=2, n_examples=2000, pgd_steps=10))


SCALES: dict[str, Callable[[RunConfig], RunConfig]] = {"small": small, "cpu": cpu}

PAPER_RECIPES: dict[str, Callable[[], RunConfig]] = {
    "natural": natural,
    "pgd-at": pgd_at,
    "generalist-d": generalist_d,
    "generalist-mn": generalist_mn,
    "generalist-t": generalist_t,
    "trades": trades,
    "avg": avg,
    "max": max_,
    "msd": msd_,
    "e-at": e_at,
}


def recipe_names() -> list[str]:
    return sorted(list(PAPER_RECIPES) + [f"{name}-{scale}" for name in PAPER_RECIPES for scale in SCALES])


def get_recipe(name: str) -> RunConfig:
    """The config of a named recipe; `NAME-small` and `NAME-cpu` are the CPU-scale variants of `NAME`."""
    base, _, scale = name.rpartition("-")
    if scale not in SCALES:
        base, scale = name, None
    if base not in PAPER_RECIPES:
        close = difflib.get_close_matches(name, recipe_names(), n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown recipe {name!r}{hint}; recipes: {', '.join(recipe_names())}")
    config = PAPER_RECIPES[base]()
    return SCALES[scale](config) if scale else config
