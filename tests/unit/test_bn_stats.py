"""Re-estimated BatchNorm statistics of the global learner: what changes, what does not, and on which inputs."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from generalist.bn_stats import (batchnorm_buffer_names, reestimate_bn_, reestimate_global_bn_,
                                 split_by_weight)
from generalist.config import AttackConfig
from generalist.learner import Learner
from generalist.models import build_model
from generalist.training import prepare_run_data

KWARGS = {"num_classes": 10, "in_channels": 3, "mean": (0.5,) * 3, "std": (0.25,) * 3}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("small-cnn", **KWARGS)


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def test_reestimation_changes_the_running_statistics_and_nothing_else():
    model = _model()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reestimate_bn_(model, (x for x, _ in _batches(3)))
    after = model.state_dict()
    bn = batchnorm_buffer_names(model)
    stats = [k for k in bn if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(before[k], after[k]) for k in stats)
    assert all(torch.equal(before[k], after[k]) for k in after if k not in stats)  # weights, num_batches_tracked
    assert not model.training  # the mode it had
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_reestimated_statistics_depend_on_the_weights_and_batches_only():
    """Twice gives the same bits, whatever statistics the model held before: final/global.pt re-estimated
    again by `generalist eval` is the model training shipped."""
    a, b = _model(), _model()
    with torch.no_grad():
        for name, buffer in b.named_buffers():
            if name.endswith("running_mean"):
                buffer.add_(3.0)
    batches = [x for x, _ in _batches(3)]
    reestimate_bn_(a, batches)
    reestimate_bn_(b, batches)
    reestimate_bn_(b, batches)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_the_statistics_are_the_plain_mean_and_variance_of_the_batches():
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    batches = [x for x, _ in _batches(2)]
    reestimate_bn_(model, batches)
    bn = model[0]
    # momentum=None averages the per-batch statistics with equal weight (batches of equal size here).
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in batches]).mean(0)
    variances = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, means)
    torch.testing.assert_close(bn.running_var, variances)


def test_no_batches_is_an_error_rather_than_reset_statistics():
    with pytest.raises(ValueError, match="no batches"):
        reestimate_bn_(_model(), [])


@pytest.mark.parametrize("n,weights,expected", [(128, [1.0, 0.0], [128, 0]), (128, [0.4, 0.6], [51, 77]),
                                                (10, [1 / 3] * 3, [4, 3, 3]), (7, [0.5, 0.5], [4, 3])])
def test_a_batch_is_shared_among_the_learners_in_proportion_to_their_weights(n, weights, expected):
    assert split_by_weight(n, weights) == expected


def test_the_global_statistics_come_from_each_learners_training_inputs_by_weight():
    """A learner that carries weight and trains on attack points brings those points in: the statistics
    differ from those of clean batches, and a weight of 0 for it gives the clean ones exactly."""
    linf = AttackConfig(norm="Linf", eps=0.3, step_size=0.1, steps=2)
    batches = _batches(2)
    clean, mixed, unweighted = _model(), _model(), _model()
    reestimate_bn_(clean, (x for x, _ in batches))
    reestimate_global_bn_(mixed, batches, [(0.5, linf), (0.5, None)], torch.Generator().manual_seed(0))
    reestimate_global_bn_(unweighted, batches, [(0.0, linf), (1.0, None)], torch.Generator().manual_seed(0))
    differs = [k for k, v in clean.state_dict().items() if k.endswith("running_var")
               and not torch.equal(v, mixed.state_dict()[k])]
    assert differs
    for k, v in clean.state_dict().items():
        assert torch.equal(v, unweighted.state_dict()[k]), k


@pytest.mark.parametrize("global_bn,keeps_own", [("interpolate", False), ("reestimate", True)])
def test_at_redistribution_a_learner_keeps_its_own_statistics_only_when_they_are_reestimated(global_bn, keeps_own):
    config = tiny_config("generalist-d-small", f"mixing.global_bn={global_bn}")
    data = prepare_run_data(config)
    learner = Learner(config, 0, data.initial_state, data.stream, data.model_kwargs, torch.device("cpu"))
    learner.run_steps(1, 0, 2)
    own = {k: v.clone() for k, v in learner.model.state_dict().items()}
    incoming = {k: (v + 1 if v.is_floating_point() else v + 5) for k, v in own.items()}
    learner.load_global_(incoming)
    bn = batchnorm_buffer_names(learner.model)
    for k, v in learner.model.state_dict().items():
        expected = own[k] if (keeps_own and k in bn) else incoming[k]
        assert torch.equal(v, expected), k
