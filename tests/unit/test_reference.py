"""The framework against the reference algorithm of PAPER.md, written out plainly here."""

from __future__ import annotations

import copy

import torch

from generalist.attacks import pgd
from generalist.checkpoint import load_state_dict_file
from generalist.data import derive_seed
from generalist.distributed import train
from generalist.losses import cross_entropy
from generalist.mixing import piecewise_linear
from generalist.threat import get_threat
from generalist.training import prepare_run_data


def ema(shadow: dict, value: dict, step: int) -> None:
    d = min(0.999, (step + 1) / (step + 10))
    for name in shadow:
        if shadow[name].is_floating_point():
            shadow[name] = d * shadow[name] + (1 - d) * value[name]
        else:  # integer BN counters are copied, not averaged (defect 4 of the reference code)
            shadow[name] = value[name].clone()


def reference_generalist_d(config) -> tuple[dict, dict]:
    """PAPER.md's pseudo-code for two learners (AT = Linf-PGD, ST = natural), line by line: the global learner's
    final state, and the AT learner's EMA (what the global would be without mixing)."""
    data = prepare_run_data(config)
    at_cfg, st_cfg = config.learners  # recipe order: linf (anchor), natural
    E = config.schedule.epochs
    from generalist.models import build_model

    theta_AT = build_model(config.model.name, **data.model_kwargs)
    theta_AT.load_state_dict(data.initial_state)
    theta_ST = copy.deepcopy(theta_AT)  # same initialisation
    E_AT = {k: v.clone() for k, v in theta_AT.state_dict().items()}
    E_ST = {k: v.clone() for k, v in theta_ST.state_dict().items()}
    E_G = {k: v.clone() for k, v in theta_ST.state_dict().items()}
    s_AT = s_ST = s_G = 0
    opt_AT = torch.optim.SGD(theta_AT.parameters(), lr=at_cfg.lr, momentum=0.9, weight_decay=at_cfg.weight_decay)
    opt_ST = torch.optim.SGD(theta_ST.parameters(), lr=st_cfg.lr, momentum=0.9, weight_decay=st_cfg.weight_decay)
    generator = torch.Generator().manual_seed(derive_seed(config.seed, 1, 0))  # the AT learner's attack RNG
    threat = get_threat("Linf", at_cfg.attack.eps)
    theta_AT.train()
    theta_ST.train()
    for e in range(1, E + 1):
        knots = [0, E / 3, 2 * E / 3, E]
        lr_scale = piecewise_linear(e, knots, [1, 1, 0.1, 0.01])
        beta = piecewise_linear(e, knots, [1, 1, 1, 0.4])
        for group in opt_AT.param_groups:
            group["lr"] = at_cfg.lr * lr_scale
        for group in opt_ST.param_groups:
            group["lr"] = st_cfg.lr * lr_scale
        for step in range(data.stream.steps_per_epoch):
            x, y = data.stream.batch(e - 1, step)  # the SAME augmented batch for both learners
            theta_AT.eval()
            x_adv = pgd(theta_AT, x, y, threat, steps=at_cfg.attack.steps, step_size=at_cfg.attack.step_size,
                        random_start=True, generator=generator)
            theta_AT.train()
            opt_AT.zero_grad()
            cross_entropy(theta_AT(x_adv), y).mean().backward()
            opt_AT.step()
            ema(E_AT, theta_AT.state_dict(), s_AT)
            s_AT += 1
            opt_ST.zero_grad()
            cross_entropy(theta_ST(x), y).mean().backward()
            opt_ST.step()
            ema(E_ST, theta_ST.state_dict(), s_ST)
            s_ST += 1
            mix = {k: beta * E_AT[k] + (1 - beta) * E_ST[k] if E_AT[k].is_floating_point() else E_AT[k]
                   for k in E_AT}
            ema(E_G, mix, s_G)
            s_G += 1
            if e >= 75 / 120 * E and e % config.mixing.redistribute_every == 0:  # communication epoch
                theta_AT.load_state_dict(E_G)  # every iteration; momentum is kept
                theta_ST.load_state_dict(E_G)
    return E_G, E_AT


def test_framework_equals_the_reference_algorithm_bit_for_bit(tiny, tmp_path):
    # 4 epochs x 20 steps = 80 steps; mixing starts in epoch 3, redistribution in epochs 3 and 4. (It was 50 steps
    # an epoch, 42 s of `make test`; the schedule's epochs, not the steps in them, are what the comparison needs.)
    config = tiny("generalist-d-small", "schedule.epochs=4", "data.train_subset=1280", "mixing.sync_every=1")
    torch.set_num_threads(1)
    expected, anchor_ema = reference_generalist_d(config)
    train(config, tmp_path / "run", quiet=True)
    got = load_state_dict_file(tmp_path / "run" / "final" / "global.pt")
    assert set(got) == set(expected)
    mismatched = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not mismatched, f"tensors differ from the reference: {mismatched[:5]}"
    # The run really mixed: the global model is not the AT learner's EMA alone.
    assert any(not torch.equal(v, anchor_ema[k]) for k, v in expected.items() if v.is_floating_point())


def test_a_changed_mixing_rule_is_caught_by_the_reference(tiny, tmp_path):
    """Guard against a vacuous comparison: a run with a different final weight must differ."""
    config = tiny("generalist-d-small", "schedule.epochs=2", "data.train_subset=640")
    expected, _ = reference_generalist_d(config)
    changed = tiny("generalist-d-small", "schedule.epochs=2", "data.train_subset=640",
                   "learners.linf.final_weight=0.5", "learners.natural.final_weight=0.5")
    train(changed, tmp_path / "run", quiet=True)
    got = load_state_dict_file(tmp_path / "run" / "final" / "global.pt")
    assert any(not torch.equal(got[k], expected[k]) for k in expected if expected[k].is_floating_point())
