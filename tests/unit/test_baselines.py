"""The baseline objectives (TRADES, AVG, MAX, MSD, E-AT) on hand-checked cases, and their recipes on real data.

Most cases use toy models whose attacks can be followed by hand: `Squares` has logits (0, s * sum(x^2)), so with
label 0 the loss grows with every |x_i| and the input gradient is 0 wherever x_i = 0. An image of 16 pixels at
0.5 ("dense") gains most from an Linf step (all 16 pixels move), an image with one pixel at 0.5 ("sparse") from
an L2 step (the whole budget lands on that pixel).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from generalist.attacks import msd, pgd
from generalist.baselines import baseline_loss, trades_attack
from generalist.config import AttackConfig, LearnerConfig, apply_overrides
from generalist.errors import ConfigError
from generalist.learner import Learner
from generalist.recipes import get_recipe
from generalist.threat import get_threat
from generalist.training import prepare_run_data

BASELINES = ["trades", "avg", "max", "msd", "e-at"]
S = 0.5  # logit scale of the toy models

LINF = AttackConfig(norm="Linf", eps=0.1, step_size=0.1, steps=1, random_start=False)
L2 = AttackConfig(norm="L2", eps=0.3, step_size=0.3, steps=1, random_start=False)


class Squares(nn.Module):
    """logits (0, S * sum(x^2)); records the mode of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        z = S * (x**2).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(z), z], dim=1)


class Linear(nn.Module):
    """logits (0, S * sum(x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = S * x.flatten(1).sum(1)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def dense_and_sparse() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(2, 1, 4, 4)
    x[0] = 0.5  # dense: Linf moves all 16 pixels by 0.1 -> sum x^2 = 16 * 0.6^2 = 5.76; L2: 16 * 0.575^2 = 5.29
    x[1, 0, 0, 0] = 0.5  # sparse: Linf -> 0.6^2 = 0.36; L2 -> 0.8^2 = 0.64
    return x, torch.zeros(2, dtype=torch.long)


def ce0(sum_sq: float) -> float:
    """CE of label 0 when the logits are (0, S * sum_sq)."""
    return math.log1p(math.exp(S * sum_sq))


def learner(objective: str, attack: AttackConfig, *extra: AttackConfig, **fields) -> LearnerConfig:
    return LearnerConfig(name="b", objective=objective, attack=attack, extra_attacks=list(extra), **fields)


def loss_of(objective: str, model: nn.Module, *threats: AttackConfig, seed: int = 0, **fields):
    x, y = dense_and_sparse()
    model.train()
    return baseline_loss(model, x, y, learner(objective, *threats, **fields), torch.Generator().manual_seed(seed), 0)


def test_max_trains_each_example_on_the_point_of_its_worst_threat():
    loss, logits = loss_of("max", Squares(), LINF, L2)
    # dense: Linf (5.76) beats L2 (5.29); sparse: L2 (0.64) beats Linf (0.36)
    assert logits[:, 1].tolist() == pytest.approx([S * 5.76, S * 0.64], abs=1e-5)
    assert loss.item() == pytest.approx((ce0(5.76) + ce0(0.64)) / 2, abs=1e-5)


def test_avg_is_the_mean_cross_entropy_over_every_threats_points():
    loss, logits = loss_of("avg", Squares(), LINF, L2)
    assert loss.item() == pytest.approx((ce0(5.76) + ce0(5.29) + ce0(0.36) + ce0(0.64)) / 4, abs=1e-5)
    assert logits[:, 1].tolist() == pytest.approx([S * 5.76, S * 0.64], abs=1e-5)  # each example's worst threat


def test_msd_step_is_the_per_example_argmax_over_the_norms_proposals():
    """Linf step 0.1 (eps 0.1) and L2 step 0.075 (eps 0.3), from delta = 0. Sparse example: step 1 Linf wins
    (0.1 > 0.075), then L2 wins from there: 0.175, 0.25, 0.325 -> projected to 0.3. Dense example: Linf wins
    every step (L2's proposal from the Linf corner is projected back to 0.075 a pixel)."""
    x, y = dense_and_sparse()
    threats = [get_threat("Linf", 0.1), get_threat("L2", 0.3)]
    for steps, sparse_pixel in [(1, 0.6), (2, 0.675), (4, 0.8)]:
        x_adv = msd(Squares(), x, y, threats, steps=steps, step_sizes=[0.1, 0.075])
        assert torch.allclose(x_adv[0], torch.full_like(x[0], 0.6), atol=1e-6)
        assert x_adv[1, 0, 0, 0].item() == pytest.approx(sparse_pixel, abs=1e-6)
        assert x_adv[1].flatten()[1:].abs().max().item() == 0.0
    # Two MSD steps reach a point neither norm's own PGD reaches in two steps (Linf stops at 0.6, L2 at 0.65).
    assert pgd(Squares(), x, y, threats[0], steps=2, step_size=0.1, random_start=False)[1, 0, 0, 0] == \
        pytest.approx(0.6)
    assert pgd(Squares(), x, y, threats[1], steps=2, step_size=0.075, random_start=False)[1, 0, 0, 0] == \
        pytest.approx(0.65)


def test_msd_objective_trains_on_msd_points_with_the_first_threats_step_count():
    linf = AttackConfig(norm="Linf", eps=0.1, step_size=0.1, steps=4, random_start=False)
    l2 = AttackConfig(norm="L2", eps=0.3, step_size=0.075, steps=1, random_start=False)
    loss, logits = loss_of("msd", Squares(), linf, l2)
    assert logits[:, 1].tolist() == pytest.approx([S * 5.76, S * 0.64], abs=1e-5)
    assert loss.item() == pytest.approx((ce0(5.76) + ce0(0.64)) / 2, abs=1e-5)


def test_msd_refuses_a_step_size_list_that_does_not_match_the_threats():
    x, y = dense_and_sparse()
    with pytest.raises(ValueError, match="one step size per threat"):
        msd(Squares(), x, y, [get_threat("Linf", 0.1), get_threat("L2", 0.3)], steps=1, step_sizes=[0.1])


def test_e_at_trains_each_batch_on_one_threat_drawn_from_the_learners_generator():
    only_linf = (ce0(5.76) + ce0(0.36)) / 2
    only_l2 = (ce0(5.29) + ce0(0.64)) / 2
    picks = []
    for seed in range(40):
        loss, _ = loss_of("e-at", Squares(), LINF, L2, seed=seed)
        expected = int(torch.randint(2, (1,), generator=torch.Generator().manual_seed(seed)).item())
        assert loss.item() == pytest.approx([only_linf, only_l2][expected], abs=1e-5)
        picks.append(expected)
    assert 10 <= sum(picks) <= 30  # both threats are drawn, about equally often


def test_trades_kl_term_is_zero_when_the_attack_leaves_the_output_unchanged():
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.3, -0.2, 1.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bias + 0.0 * x.flatten(1).sum(1, keepdim=True)

    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 1])
    clean_ce = F.cross_entropy(Constant()(x), y).item()
    for beta in (0.0, 6.0):
        loss, _ = baseline_loss(Constant(), x, y, learner("trades", LINF, trades_beta=beta),
                                torch.Generator().manual_seed(0), 0)
        assert loss.item() == pytest.approx(clean_ce, abs=1e-7)


def test_trades_loss_is_clean_ce_plus_beta_kl_at_the_kl_maximising_corner_of_the_ball():
    """Linear logits (0, S * sum(x)), x = 0.5: the KL-maximising Linf point moves every pixel by eps in the
    direction the start noise tipped, so z_adv = z_clean +- 16 * eps * S."""
    x, y = torch.full((1, 1, 4, 4), 0.5), torch.zeros(1, dtype=torch.long)
    attack = AttackConfig(norm="Linf", eps=0.05, step_size=0.05, steps=2)
    x_adv = trades_attack(Linear(), x, Linear()(x), get_threat("Linf", 0.05), steps=2, step_size=0.05,
                          generator=torch.Generator().manual_seed(3))
    shift = x_adv - x
    assert torch.allclose(shift.abs(), torch.full_like(x, 0.05), atol=1e-6) and shift.sign().unique().numel() == 1

    loss, logits_adv = baseline_loss(Linear(), x, y, learner("trades", attack, trades_beta=6.0),
                                     torch.Generator().manual_seed(3), 0)
    z_clean, z_adv = S * 8.0, logits_adv[0, 1].item()
    assert abs(z_adv - z_clean) == pytest.approx(16 * 0.05 * S, abs=1e-5)
    p, q = 1 / (1 + math.exp(-z_clean)), 1 / (1 + math.exp(-z_adv))  # P(class 1), clean and adversarial
    kl = (1 - p) * math.log((1 - p) / (1 - q)) + p * math.log(p / q)
    assert loss.item() == pytest.approx(math.log1p(math.exp(z_clean)) + 6.0 * kl, abs=1e-5)


@pytest.mark.parametrize("objective, threats, train_passes", [
    ("trades", [LINF], 2), ("avg", [LINF, L2], 1), ("max", [LINF, L2], 1), ("msd", [LINF, L2], 1),
    ("e-at", [LINF, L2], 1),
])
def test_attacks_run_in_eval_mode_and_only_training_passes_in_train_mode(objective, threats, train_passes):
    model = Squares()
    rng_before = torch.get_rng_state()
    loss, _ = loss_of(objective, model, *threats, seed=5)
    assert model.training, "the model must be back in train mode"
    assert sum(model.modes) == train_passes and len(model.modes) > train_passes
    assert model.modes[-1] is True  # the training pass comes after every attack pass
    assert torch.equal(torch.get_rng_state(), rng_before), "objectives draw only from the learner's generator"
    assert loss_of(objective, Squares(), *threats, seed=5)[0].item() == loss.item()


def test_trades_learner_refuses_extra_attacks_and_a_negative_beta():
    with pytest.raises(ConfigError, match="remove extra_attacks"):
        learner("trades", LINF, L2)
    with pytest.raises(ConfigError, match="trades_beta must be >= 0"):
        learner("trades", LINF, trades_beta=-1.0)


def test_small_baseline_recipes_shrink_every_threat_to_pgd5():
    for name in BASELINES:
        (spec,) = get_recipe(f"{name}-small").learners
        assert spec.objective == name and spec.lr == 0.05
        for attack in spec.threats:
            assert attack.steps == 5 and attack.step_size == pytest.approx(2.5 * attack.eps / 5)
    assert [a.norm for a in get_recipe("msd").learners[0].threats] == ["Linf", "L2", "L1"]
    assert [a.norm for a in get_recipe("e-at").learners[0].threats] == ["Linf", "L1"]
    assert get_recipe("trades").learners[0].trades_beta == 6.0


def test_an_l1_threat_can_be_added_to_avg_from_the_command_line():
    config = apply_overrides(get_recipe("avg"), [
        'learners.avg.extra_attacks=[{"norm": "L2", "eps": 0.5, "step_size": 0.125}, '
        '{"norm": "L1", "eps": 12, "step_size": 3}]'])
    assert [(a.norm, a.eps, a.steps) for a in config.learners[0].threats] == [
        ("Linf", 8 / 255, 10), ("L2", 0.5, 10), ("L1", 12.0, 10)]


@pytest.fixture
def one_thread():
    """One intra-op thread, as a learner runs (runtime.threads_per_learner=1): two threads on two shared cores
    are slower here, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("recipe", BASELINES)
def test_each_baseline_recipe_lowers_its_loss_training_on_a_real_cifar10_batch(recipe, tiny, one_thread):
    """The real learner (SGD, schedule, objective) repeats step 0 of epoch 1, one real CIFAR-10 batch."""
    config = tiny(f"{recipe}-small", "data.batch_size=32", "data.train_subset=64")
    data = prepare_run_data(config)
    learner_ = Learner(config, 0, data.initial_state, data.stream, data.model_kwargs, torch.device("cpu"))
    losses = [learner_.run_steps(1, 0, 1).loss for _ in range(6)]
    assert max(losses[-2:]) < 0.9 * losses[0], f"{recipe}: losses {losses}"
