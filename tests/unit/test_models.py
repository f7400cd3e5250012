"""Model registry contract: x in [0, 1] -> logits, Normalize first, constants out of the state dict."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from generalist.errors import ConfigError
from generalist.models import MODEL_NAMES, Normalize, build_model

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)

# Reference parameter counts for 10 classes, 3 input channels (kuangliu/pytorch-cifar ResNet-18,
# Rice et al. PreAct ResNet-18, RobustBench WideResNet-28-10 / 34-10).
REFERENCE_PARAMS = {
    "resnet18": 11_173_962,
    "preact-resnet18": 11_172_170,
    "wrn-28-10": 36_479_194,
    "wrn-34-10": 46_160_474,
}


def _cifar_model(name: str, num_classes: int = 10) -> nn.Module:
    return build_model(name, num_classes=num_classes, in_channels=3, mean=CIFAR_MEAN, std=CIFAR_STD)


@pytest.fixture(scope="module")
def cifar_models() -> dict[str, nn.Module]:
    """One eval-mode CIFAR build per name, shared by the read-only tests (WRN builds take ~1 s each)."""
    torch.manual_seed(0)
    return {name: _cifar_model(name).eval() for name in MODEL_NAMES}


def test_the_registry_lists_exactly_the_documented_models():
    assert MODEL_NAMES == ("small-cnn", "small-cnn-wide", "resnet18", "preact-resnet18", "wrn-28-10", "wrn-34-10")


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(
    "in_channels, size, mean, std",
    [(3, 32, CIFAR_MEAN, CIFAR_STD), (1, 28, MNIST_MEAN, MNIST_STD)],
    ids=["cifar", "mnist"],
)
def test_every_model_maps_images_to_one_logit_per_class(name, in_channels, size, mean, std):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=in_channels, mean=mean, std=std).eval()
    x = torch.rand(2, in_channels, size, size)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 7)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # Logits, not probabilities: rows neither sum to one nor stay inside [0, 1].
    assert not torch.allclose(logits.sum(dim=1), torch.ones(2))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_normalize_is_the_first_child_and_the_first_module_forward_runs(name, cifar_models):
    model = cifar_models[name]
    assert isinstance(model.normalize, Normalize)
    assert next(model.children()) is model.normalize

    calls: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda m, _: calls.append(m)) for m in model.modules() if m is not model]
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert calls[0] is model.normalize


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_mean_and_std_are_buffers_outside_the_state_dict(name, cifar_models):
    model = cifar_models[name]
    buffers = dict(model.named_buffers())
    assert torch.allclose(buffers["normalize.mean"].flatten(), torch.tensor(CIFAR_MEAN))
    assert torch.allclose(buffers["normalize.std"].flatten(), torch.tensor(CIFAR_STD))
    state = model.state_dict()
    assert not [k for k in state if k.startswith("normalize.")]
    # A state dict from another model (e.g. an average of learners) loads strictly and keeps our constants.
    other = copy.deepcopy(model)
    other.normalize.mean.zero_()
    other.load_state_dict(state, strict=True)
    assert torch.equal(other.normalize.mean.flatten(), torch.zeros(3))


def test_normalize_computes_x_minus_mean_over_std():
    norm = Normalize(mean=(0.5, 0.25), std=(0.5, 2.0))
    x = torch.tensor([1.0, 0.25]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    expected = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    assert torch.allclose(norm(x), expected)


def test_small_cnn_is_small_and_its_batchnorm_statistics_are_in_the_state_dict():
    model = _cifar_model("small-cnn")
    n_params = sum(p.numel() for p in model.parameters())
    assert 25_000 <= n_params <= 60_000
    state = model.state_dict()
    assert any(k.endswith("running_mean") for k in state)
    assert any(k.endswith("running_var") for k in state)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_large_models_have_the_reference_parameter_count(name, cifar_models):
    model = cifar_models[name]
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_two_builds_after_the_same_seed_are_identical_and_another_seed_differs(name):
    def build(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return _cifar_model(name).state_dict()

    a, b, c = build(1), build(1), build(2)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_has_nonzero_input_gradients(name, cifar_models):
    # AutoAttack's sanity check: a zero input gradient makes every gradient attack silently fail.
    model = cifar_models[name]
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x)[0, 0], x)  # not .backward(): the shared model keeps no .grad
    assert grad.abs().sum() > 0


def test_unknown_model_name_lists_close_matches_and_all_valid_names():
    with pytest.raises(ConfigError) as info:
        _cifar_model("resnet-18")
    message = str(info.value)
    assert "'resnet18'" in message
    assert all(name in message for name in MODEL_NAMES)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(num_classes=0, in_channels=3, mean=CIFAR_MEAN, std=CIFAR_STD), "num_classes"),
        (dict(num_classes=10, in_channels=1, mean=CIFAR_MEAN, std=CIFAR_STD), "one value per input channel"),
        (dict(num_classes=10, in_channels=3, mean=CIFAR_MEAN, std=(0.2, 0.0, 0.2)), "std"),
    ],
    ids=["no-classes", "mean-length", "zero-std"],
)
def test_inconsistent_arguments_raise_a_config_error_naming_the_field(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_model("small-cnn", **kwargs)
