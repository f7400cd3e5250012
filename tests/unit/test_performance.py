"""The speed settings of a learner's step on CPU: bf16 autocast trains and keeps the attack in its ball, the fp32
defaults leave the step untouched, and the settings validate and fingerprint as documented (docs/performance.md).

Real CIFAR-10, small-cnn, one thread. bf16 on CPU is emulated and slow (about 3x fp32 here), so the runs are short:
about 40 s in all on 2 shared cores.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from conftest import tiny_config
from generalist.attacks import pgd
from generalist.config import apply_overrides
from generalist.errors import ConfigError
from generalist.learner import Learner
from generalist.losses import cross_entropy
from generalist.threat import get_threat
from generalist.training import prepare_run_data


def make_learner(*overrides: str, recipe: str = "pgd-at-small", index: int = 0) -> Learner:
    config = tiny_config(recipe, "data.train_subset=2560", *overrides)
    torch.set_num_threads(1)
    data = prepare_run_data(config)
    return Learner(config, index, data.initial_state, data.stream, data.model_kwargs, torch.device("cpu"))


def step_losses(learner: Learner, n: int) -> list[float]:
    """The training loss of n successive single steps of epoch 1."""
    return [learner.run_steps(1, step % learner.stream.steps_per_epoch, 1).loss for step in range(n)]


def test_bf16_adversarial_training_on_cifar10_lowers_the_loss():
    learner = make_learner("runtime.precision=bf16", "learners.0.lr=0.05")
    losses = step_losses(learner, 40)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert all(map(torch.isfinite, torch.tensor(losses))), losses
    assert last < first - 0.1, f"bf16 PGD-AT did not learn in 40 steps: mean loss {first:.3f} -> {last:.3f}"


def test_bf16_keeps_parameters_optimizer_state_and_ema_in_fp32():
    learner = make_learner("runtime.precision=bf16")
    step_losses(learner, 2)
    assert all(p.dtype == torch.float32 for p in learner.model.parameters())
    momentum = [s["momentum_buffer"] for s in learner.optimizer.state.values()]
    assert momentum and all(m.dtype == torch.float32 for m in momentum)
    assert all(t.dtype == torch.float32 for t in learner.ema.values() if t.is_floating_point())


def test_bf16_changes_the_numbers_of_a_step():
    """If autocast were silently not applied, bf16 would be a no-op setting; the losses show it is not."""
    fp32, bf16 = make_learner(), make_learner("runtime.precision=bf16")
    a, b = step_losses(fp32, 2), step_losses(bf16, 2)
    assert a != b and abs(a[0] - b[0]) < 0.05, (a, b)


def test_fp32_defaults_leave_the_cpu_step_as_it_was():
    learner = make_learner()
    assert learner.memory_format is torch.contiguous_format
    assert learner.forward_model is learner.model
    assert isinstance(learner.autocast(), contextlib.nullcontext)
    assert learner.stream.data.x.device.type == "cpu"
    conv = next(p for p in learner.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous()


def test_channels_last_on_cpu_trains_to_the_same_losses_within_rounding():
    default, nhwc = make_learner(), make_learner("runtime.channels_last=true")
    conv = next(p for p in nhwc.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    a, b = step_losses(default, 3), step_losses(nhwc, 3)
    assert a == pytest.approx(b, rel=1e-4, abs=1e-4)


@pytest.fixture(scope="module")
def cifar_batch():
    learner = make_learner()
    x, y = learner.stream.batch(0, 0)
    step_losses(learner, 5)  # a few steps away from the initialisation, so gradients are informative
    learner.model.eval()
    return learner.model, x[:64], y[:64]


@pytest.mark.parametrize("norm, eps, step_size", [("Linf", 8 / 255, 2 / 255), ("L2", 0.5, 0.125)])
def test_pgd_under_bf16_autocast_stays_inside_the_ball_and_the_box(cifar_batch, norm, eps, step_size):
    model, x, y = cifar_batch
    threat = get_threat(norm, eps)
    generator = torch.Generator().manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(model, x, y, threat, steps=10, step_size=step_size, random_start=True, generator=generator)
    assert x_adv.dtype == torch.float32, "the attack's points must stay fp32 under autocast"
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert threat.norm(x_adv - x).max() <= eps * (1 + 1e-6), f"{norm} attack left the eps-ball under autocast"
    with torch.no_grad():
        clean, adv = cross_entropy(model(x), y).mean(), cross_entropy(model(x_adv), y).mean()
    assert adv > clean, "the bf16 attack must still raise the loss"


def test_precision_is_in_the_fingerprint_and_fp32_reads_as_before():
    config = tiny_config("pgd-at-small")
    assert "precision" not in config.fingerprint()["runtime"], "fp32 runs written before the field must resume"
    bf16 = apply_overrides(config, ["runtime.precision=bf16"])
    assert bf16.fingerprint() != config.fingerprint()
    speed_only = apply_overrides(config, ["runtime.channels_last=true", "runtime.data_on_device=true",
                                          "runtime.compile=true", "runtime.gpus_per_learner=0.5",
                                          "runtime.cuda_graph=true"])
    assert speed_only.fingerprint() == config.fingerprint()


@pytest.mark.parametrize("override, message", [
    ("runtime.precision=fp16", "runtime.precision='fp16' is not valid"),
    ("runtime.precision=bf16x", "did you mean 'bf16'"),
    ("runtime.gpus_per_learner=1.5", "must be a whole number of GPUs"),
    ("runtime.gpus_per_learner=-1", "must be >= 0"),
    ("runtime.channels_last=1", "must be true or false"),
])
def test_bad_speed_settings_are_refused_with_the_fix(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")):
        apply_overrides(tiny_config("pgd-at-small"), [override])
