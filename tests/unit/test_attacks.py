"""Threat models, PGD and attack losses: budgets respected, loss raised, no global state touched."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from generalist.attacks import pgd
from generalist.errors import ConfigError
from generalist.losses import cross_entropy, trades_kl
from generalist.models import build_model
from generalist.threat import THREAT_NAMES, L1Threat, get_threat, project_l1_ball

# Budgets scaled to 3x16x16 inputs; step sizes large enough that PGD reaches the ball's boundary.
BUDGETS = {"Linf": (8 / 255, 2 / 255), "L2": (0.5, 0.1), "L1": (4.0, 1.0)}
SHAPE = (8, 3, 16, 16)


def _threat(name: str):
    return get_threat(name, BUDGETS[name][0])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(123)
    x = torch.rand(SHAPE, generator=g)
    # Pixels sitting exactly on the box edges, where clipping matters most.
    x[:, :, :4] = 0.0
    x[:, :, -4:] = 1.0
    y = torch.randint(0, 10, (SHAPE[0],), generator=g)
    return x, y


@pytest.fixture(scope="module")
def model(data) -> nn.Module:
    # Trained-ish: a small CNN that has memorised the batch, so a clean loss is low and an attack
    # has something to undo (a random model's loss is flat, near log(10), whatever the input).
    x, y = data
    torch.manual_seed(0)
    model = build_model("small-cnn", num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        cross_entropy(model(x), y).mean().backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


# --- threat models -----------------------------------------------------------------------------


def test_threat_names_are_spelled_as_autoattack_spells_them():
    assert THREAT_NAMES == ("Linf", "L2", "L1")
    for name in THREAT_NAMES:
        assert get_threat(name, 0.1).name == name
        assert get_threat(name.lower(), 0.1).name == name


@pytest.mark.parametrize("eps", [0.0, -8 / 255, math.nan, math.inf, "8/255"])
def test_non_positive_or_non_finite_eps_is_rejected_with_the_fraction_hint(eps):
    with pytest.raises(ConfigError, match="8/255"):
        get_threat("Linf", eps)


def test_unknown_threat_name_lists_close_and_valid_names():
    with pytest.raises(ConfigError) as info:
        get_threat("Linfty", 0.1)
    message = str(info.value)
    assert "did you mean 'Linf'" in message
    assert all(name in message for name in THREAT_NAMES)


@pytest.mark.parametrize("name", THREAT_NAMES)
def test_random_init_is_inside_the_ball_and_the_box(name, data):
    x, _ = data
    threat = _threat(name)
    delta = threat.random_init(x, _gen())
    assert delta.shape == x.shape
    assert (threat.norm(delta) <= threat.eps + 1e-6).all()
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    # A random start must actually move: a zero start would make restarts pointless.
    assert (threat.norm(delta) > 0).all()


@pytest.mark.parametrize("name", THREAT_NAMES)
def test_random_init_depends_only_on_the_generator(name, data):
    x, _ = data
    threat = _threat(name)
    rng = torch.get_rng_state()
    a, b, c = threat.random_init(x, _gen(7)), threat.random_init(x, _gen(7)), threat.random_init(x, _gen(8))
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", THREAT_NAMES)
def test_random_init_requires_an_explicit_generator(name, data):
    with pytest.raises(ValueError, match="Generator"):
        _threat(name).random_init(data[0], None)


@pytest.mark.parametrize("name", THREAT_NAMES)
def test_steps_have_unit_norm_and_a_zero_gradient_gives_no_step(name):
    threat = _threat(name)
    grad = torch.randn(SHAPE, generator=_gen())
    direction = threat.step(grad)
    assert torch.allclose(threat.norm(direction), torch.ones(SHAPE[0]), atol=1e-5)
    # Steepest ascent: the step is positively aligned with the gradient.
    assert ((direction * grad).flatten(1).sum(dim=1) > 0).all()
    zero = threat.step(torch.zeros(SHAPE))
    assert torch.isfinite(zero).all() and (zero == 0).all()


def test_l1_step_moves_only_the_top_five_percent_of_coordinates():
    threat = get_threat("L1", 1.0)
    assert threat.l1_sparsity == 0.05
    grad = torch.randn(2, 1, 10, 10, generator=_gen())  # 100 coordinates -> 5 move
    direction = threat.step(grad).flatten(1)
    g = grad.flatten(1)
    for i in range(2):
        moved = direction[i].nonzero().flatten()
        assert set(moved.tolist()) == set(g[i].abs().topk(5).indices.tolist())
        assert torch.allclose(direction[i, moved], g[i, moved].sign() / 5)


def test_l1_projection_matches_known_answers():
    # [3, 1] onto the radius-2 ball: threshold 1 -> [2, 0]; [1, -1, 1] onto radius 1.5: threshold 0.5.
    assert torch.allclose(project_l1_ball(torch.tensor([[3.0, 1.0]]), 2.0), torch.tensor([[2.0, 0.0]]))
    assert torch.allclose(
        project_l1_ball(torch.tensor([[1.0, -1.0, 1.0]]), 1.5), torch.tensor([[0.5, -0.5, 0.5]])
    )
    inside = torch.tensor([[0.2, -0.3, 0.0]])
    assert torch.equal(project_l1_ball(inside, 1.0), inside)


def test_l1_projection_matches_a_bisection_on_the_threshold():
    # Independent reference: the projection is sign(v) * max(|v| - theta, 0) with theta solving
    # sum(max(|v| - theta, 0)) = eps; find theta by bisection in float64.
    v = torch.randn(16, 3, 8, 8, generator=_gen()) * torch.linspace(0.001, 0.2, 16).view(-1, 1, 1, 1)
    eps = 3.0
    got = project_l1_ball(v, eps).double().flatten(1)
    a = v.double().flatten(1).abs()
    lo, hi = torch.zeros(16, 1, dtype=torch.float64), a.amax(dim=1, keepdim=True)
    for _ in range(200):
        mid = (lo + hi) / 2
        too_big = (a - mid).clamp_min(0).sum(dim=1, keepdim=True) > eps
        lo, hi = torch.where(too_big, mid, lo), torch.where(too_big, hi, mid)
    outside = a.sum(dim=1, keepdim=True) > eps
    assert outside.any() and (~outside).any()  # both branches exercised
    theta = torch.where(outside, hi, torch.zeros_like(hi))
    expected = v.double().flatten(1).sign() * (a - theta).clamp_min(0)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", THREAT_NAMES)
def test_projection_lands_inside_the_ball_and_the_box(name, data):
    x, _ = data
    threat = _threat(name)
    delta = threat.project(torch.randn(SHAPE, generator=_gen()) * 3, x)
    assert (threat.norm(delta) <= threat.eps + 1e-6).all()
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()


def test_l1_threat_rejects_a_sparsity_outside_zero_one():
    with pytest.raises(ConfigError, match="l1_sparsity"):
        L1Threat(1.0, l1_sparsity=0.0)


# --- PGD ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", THREAT_NAMES)
def test_pgd_output_stays_inside_the_ball_and_the_box(name, model, data):
    x, y = data
    threat = _threat(name)
    # An oversized step drives every example against both the ball and the box.
    x_adv = pgd(model, x, y, threat, steps=5, step_size=threat.eps * 2, generator=_gen())
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (threat.norm(x_adv - x) <= threat.eps + 1e-6).all()
    assert (x_adv >= 0).all() and (x_adv <= 1).all()


@pytest.mark.parametrize("name", THREAT_NAMES)
def test_pgd_raises_the_loss_above_clean_and_random_noise(name, model, data):
    x, y = data
    threat = _threat(name)
    x_adv = pgd(model, x, y, threat, steps=10, step_size=BUDGETS[name][1], generator=_gen())
    with torch.no_grad():
        clean = cross_entropy(model(x), y)
        noise = cross_entropy(model(x + threat.random_init(x, _gen(99))), y)
        adv = cross_entropy(model(x_adv), y)
    assert (adv > clean).all()
    assert adv.mean() > 3 * max(noise.mean(), clean.mean())


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pgd_leaves_the_model_mode_as_the_caller_set_it(mode, data):
    x, y = data
    torch.manual_seed(0)
    model = build_model("small-cnn", num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    model.train(mode == "train")
    pgd(model, x, y, _threat("Linf"), steps=2, step_size=2 / 255, generator=_gen(), restarts=2)
    assert all(m.training == (mode == "train") for m in model.modules())


def test_pgd_does_not_touch_the_global_rng(model, data):
    x, y = data
    rng = torch.get_rng_state()
    pgd(model, x, y, _threat("L2"), steps=2, step_size=0.1, generator=_gen(), restarts=2)
    assert torch.equal(torch.get_rng_state(), rng)


def test_pgd_leaves_no_gradients_in_the_model_and_needs_none_on_the_inputs(model, data):
    x, y = data
    assert not x.requires_grad
    with torch.no_grad():  # attacks are often run from inside an evaluation loop
        x_adv = pgd(model, x, y, _threat("Linf"), steps=2, step_size=2 / 255, generator=_gen())
    assert not torch.equal(x_adv, x)
    assert all(p.grad is None for p in model.parameters())


def test_pgd_with_the_same_generator_seed_is_reproducible(model, data):
    x, y = data
    threat = _threat("L1")
    a = pgd(model, x, y, threat, steps=3, step_size=1.0, generator=_gen(5), restarts=2)
    b = pgd(model, x, y, threat, steps=3, step_size=1.0, generator=_gen(5), restarts=2)
    c = pgd(model, x, y, threat, steps=3, step_size=1.0, generator=_gen(6), restarts=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pgd_with_zero_steps_returns_the_random_start(model, data):
    x, y = data
    threat = _threat("Linf")
    x_adv = pgd(model, x, y, threat, steps=0, step_size=1 / 255, generator=_gen(3))
    assert torch.allclose(x_adv, x + threat.random_init(x, _gen(3)), atol=1e-7)


def test_pgd_without_random_start_is_deterministic_without_a_generator(model, data):
    x, y = data
    a = pgd(model, x, y, _threat("Linf"), steps=2, step_size=2 / 255, random_start=False)
    b = pgd(model, x, y, _threat("Linf"), steps=2, step_size=2 / 255, random_start=False)
    assert torch.equal(a, b) and not torch.equal(a, x)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(steps=-1, step_size=0.1, generator=_gen()), "steps"),
        (dict(steps=1, step_size=0.0, generator=_gen()), "step_size"),
        (dict(steps=1, step_size=0.1), "generator"),
        (dict(steps=1, step_size=0.1, generator=_gen(), restarts=0), "restarts"),
    ],
    ids=["negative-steps", "zero-step-size", "random-start-without-generator", "zero-restarts"],
)
def test_pgd_rejects_invalid_arguments(kwargs, fragment, model, data):
    x, y = data
    with pytest.raises(ValueError, match=fragment):
        pgd(model, x, y, _threat("Linf"), **kwargs)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["cross-entropy", "negated-cross-entropy"])
def test_restarts_keep_per_example_the_misclassified_then_highest_loss_point(sign, data):
    # Negated CE makes "highest loss" favour correct points, so the misclassified-first rule is exercised.
    x, _ = data
    torch.manual_seed(0)
    model = build_model("small-cnn", num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    with torch.no_grad():
        y = model(x).argmax(dim=1)  # correct on clean inputs, so restarts differ in being misclassified
    threat = get_threat("Linf", 0.5)  # large enough that random starts flip some predictions

    def loss_fn(logits, y):
        return sign * cross_entropy(logits, y)

    restarts = 4
    got = pgd(model, x, y, threat, steps=0, step_size=0.1, generator=_gen(11), loss_fn=loss_fn, restarts=restarts)
    # pgd draws one random start per restart from the generator in order; replay them.
    g = _gen(11)
    candidates = torch.stack([(x + threat.random_init(x, g)).clamp(0, 1) for _ in range(restarts)])
    with torch.no_grad():
        logits = torch.stack([model(c) for c in candidates])  # (R, B, K)
    losses = torch.stack([loss_fn(lg, y) for lg in logits])
    wrong = logits.argmax(dim=2) != y
    expected = []
    for i in range(x.shape[0]):
        pool = [r for r in range(restarts) if wrong[r, i]] or list(range(restarts))
        expected.append(max(pool, key=lambda r: losses[r, i].item()))
    assert len(set(expected)) > 1  # the choice really is per example
    assert (wrong.any(dim=0) & ~wrong.all(dim=0)).any()  # some example has both kinds of restart
    assert torch.allclose(got, candidates[expected, torch.arange(x.shape[0])], atol=1e-7)


# --- losses ------------------------------------------------------------------------------------


def test_cross_entropy_is_per_example():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    loss = cross_entropy(logits, torch.tensor([0, 1]))
    assert torch.allclose(loss, torch.tensor([math.log(1 + math.exp(-2.0)), math.log(2.0)]))


def test_trades_kl_is_kl_of_clean_to_adversarial_per_example():
    clean = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    adv = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    p, q = clean.softmax(dim=1), adv.softmax(dim=1)
    expected = (p * (p.log() - q.log())).sum(dim=1)
    got = trades_kl(adv, clean)
    assert got.shape == (2,)
    assert torch.allclose(got, expected)
    assert got[1] == 0 and got[0] > 0
    # Direction matters: KL(clean || adv), not KL(adv || clean).
    assert not torch.allclose(trades_kl(clean, adv), expected)


# --- GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", THREAT_NAMES)
def test_pgd_on_cuda_starts_where_cpu_starts_and_respects_the_budget(name, model, data):
    # The generator may stay on the CPU while x lives on the GPU: the same seed gives the same start.
    x, y = data
    threat = _threat(name)
    cuda_model = copy.deepcopy(model).cuda()
    x_cuda, y_cuda = x.cuda(), y.cuda()
    start_cuda = pgd(cuda_model, x_cuda, y_cuda, threat, steps=0, step_size=1.0, generator=_gen(4))
    start_cpu = pgd(model, x, y, threat, steps=0, step_size=1.0, generator=_gen(4))
    assert torch.allclose(start_cuda.cpu(), start_cpu, atol=1e-6)
    x_adv = pgd(cuda_model, x_cuda, y_cuda, threat, steps=5, step_size=BUDGETS[name][1], generator=_gen(4))
    assert x_adv.device == x_cuda.device
    assert (threat.norm(x_adv - x_cuda) <= threat.eps + 1e-6).all()
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    with torch.no_grad():
        assert (cross_entropy(cuda_model(x_adv), y_cuda) > cross_entropy(cuda_model(x_cuda), y_cuda)).all()
