"""Mixing rules: EMA warm-up, the gamma/beta schedule, communication epochs, BN and integer buffers."""

from __future__ import annotations

import pytest
import torch

from generalist.config import apply_overrides
from generalist.packed_state import StateLayout
from generalist.mixing import (GlobalLearner, clone_state, ema_decay, ema_decay_product, ema_update_, interpolate,
                               is_communication_epoch, lr_factor, mixing_weights)
from generalist.models import build_model
from generalist.recipes import get_recipe


def test_ema_decay_warms_up_then_caps_at_0999():
    assert ema_decay(0) == pytest.approx(1 / 10)
    assert ema_decay(1) == pytest.approx(2 / 11)
    assert ema_decay(90) == pytest.approx(91 / 100)
    assert ema_decay(10_000) == 0.999
    assert [ema_decay(s) for s in range(5)] == sorted(ema_decay(s) for s in range(5))


def test_folded_decay_is_d_to_the_n_once_warm():
    assert ema_decay_product(20_000, 10) == pytest.approx(0.999 ** 10)
    assert ema_decay_product(0, 3) == pytest.approx(ema_decay(0) * ema_decay(1) * ema_decay(2))


def test_beta_follows_the_reference_schedule_over_120_epochs():
    config = get_recipe("generalist-d")
    beta = [mixing_weights(e, config)[0] for e in (0, 40, 80, 100, 120)]
    assert beta == pytest.approx([1, 1, 1, 0.7, 0.4])
    for e in range(121):
        assert sum(mixing_weights(e, config)) == pytest.approx(1)


def test_three_learners_share_the_rest_by_their_final_weights():
    config = get_recipe("generalist-t")
    assert mixing_weights(120, config) == pytest.approx([1 / 3] * 3)
    assert mixing_weights(10, config) == pytest.approx([1, 0, 0])


def test_lr_schedule_is_piecewise_linear_over_thirds():
    config = get_recipe("generalist-d")
    assert [lr_factor(e, config) for e in (1, 40, 80, 120)] == pytest.approx([1, 1, 0.1, 0.01])
    assert lr_factor(60, config) == pytest.approx(0.55)


def test_communication_epochs_are_every_fifth_from_75_of_120():
    config = get_recipe("generalist-d")
    assert [e for e in range(1, 121) if is_communication_epoch(e, config)] == list(range(75, 121, 5))
    off = apply_overrides(config, ["mixing.redistribute=false"])
    assert not any(is_communication_epoch(e, off) for e in range(1, 121))


def test_bn_running_stats_are_mixed_like_weights_and_counters_are_not_averaged():
    a = build_model("small-cnn", num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3).state_dict()
    b = {k: (v + 1 if v.is_floating_point() else v + 4) for k, v in a.items()}
    mixed = interpolate([a, b], [0.25, 0.75])
    running = [k for k in a if k.endswith("running_mean")]
    counters = [k for k in a if k.endswith("num_batches_tracked")]
    assert running and counters
    for k in running:
        torch.testing.assert_close(mixed[k], 0.25 * a[k] + 0.75 * b[k])
    for k in counters:
        assert mixed[k].dtype == torch.long and torch.equal(mixed[k], b[k])  # the heaviest learner's count


def test_a_zero_weight_means_that_learner_contributes_nothing():
    """beta == 0 means what it says (the reference code silently fell back to the AT learner)."""
    a = {"w": torch.ones(3)}
    b = {"w": torch.full((3,), 5.0)}
    assert torch.equal(interpolate([a, b], [0.0, 1.0])["w"], b["w"])
    assert torch.equal(interpolate([a, b], [1.0, 0.0])["w"], a["w"])


def test_weights_that_do_not_sum_to_one_are_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        interpolate([{"w": torch.ones(1)}] * 2, [0.5, 0.6])


def test_ema_update_moves_toward_the_value_and_copies_counters():
    shadow = {"w": torch.zeros(2), "n": torch.tensor(3)}
    ema_update_(shadow, {"w": torch.ones(2), "n": torch.tensor(7)}, decay=0.9)
    torch.testing.assert_close(shadow["w"], torch.full((2,), 0.1))
    assert shadow["n"].item() == 7 and shadow["n"].dtype == torch.long


def test_one_sync_of_n_steps_equals_n_syncs_of_one_step_with_constant_inputs():
    config = get_recipe("generalist-d-small")
    init = {"w": torch.zeros(4)}
    layout = StateLayout(init)
    states = [layout.pack({"w": torch.ones(4)}), layout.pack({"w": torch.full((4,), 3.0)})]
    folded, stepped = GlobalLearner(config, init, steps_per_epoch=63), GlobalLearner(config, init, steps_per_epoch=63)
    folded.sync(states, epoch=8, n_steps=5)
    for _ in range(5):
        stepped.sync(states, epoch=8, n_steps=1)
    torch.testing.assert_close(folded.state["w"], stepped.state["w"])
    assert folded.ema_steps == stepped.ema_steps == 5


def test_the_global_learner_over_packed_buffers_equals_the_state_dict_rule_bit_for_bit():
    """GlobalLearner.fold (one flat pass) and interpolate + ema_update_ (tensor by tensor) are the same numbers."""
    config = get_recipe("generalist-t-small")
    model = build_model("small-cnn", num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    init = model.state_dict()
    generator = torch.Generator().manual_seed(0)
    emas = [{k: (v + torch.randn(v.shape, generator=generator) if v.is_floating_point() else v + k_)
             for k, v in init.items()} for k_ in range(3)]
    layout = StateLayout(init)
    weights = [0.2, 0.5, 0.3]
    packed = GlobalLearner(config, init, steps_per_epoch=63)
    packed.fold([layout.pack(e) for e in emas], weights, n_steps=3)
    reference = clone_state(init)
    ema_update_(reference, interpolate(emas, weights), ema_decay_product(0, 3))
    for name, tensor in reference.items():
        assert torch.equal(packed.state[name], tensor), name  # counters included: the heaviest learner's


def test_a_learner_of_zero_weight_need_not_hand_in_its_state():
    config = get_recipe("generalist-d-small")
    init = {"w": torch.zeros(4), "n": torch.tensor(0)}
    layout = StateLayout(init)
    anchor = layout.pack({"w": torch.full((4,), 2.0), "n": torch.tensor(5)})
    with_absent, with_present = GlobalLearner(config, init, steps_per_epoch=63), GlobalLearner(config, init, steps_per_epoch=63)
    with_absent.fold([anchor, None], [1.0, 0.0], n_steps=1)
    with_present.fold([anchor, layout.pack({"w": torch.full((4,), -7.0), "n": torch.tensor(9)})], [1.0, 0.0], 1)
    assert torch.equal(with_absent.buffer, with_present.buffer)
    assert with_absent.state["n"].item() == 5


@pytest.mark.parametrize("weights", [[0.2, 0.5, 0.3], [1.0, 0.0, 0.0], [0.0, 0.6, 0.4]])
def test_the_chunked_fold_gives_the_bits_of_the_whole_buffer_rule_over_many_folds(monkeypatch, weights):
    """Chunks of 1,000 floats (a small CNN holds 53k) and several folds in a row: chunking changes no bit."""
    monkeypatch.setattr(GlobalLearner, "CPU_CHUNK", 1000)
    config = get_recipe("generalist-t-small")
    model = build_model("small-cnn", num_classes=10, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    init = model.state_dict()
    layout = StateLayout(init)
    packed = GlobalLearner(config, init, steps_per_epoch=63)
    reference = clone_state(init)
    generator = torch.Generator().manual_seed(1)
    for fold in range(4):
        emas = [{k: (v + torch.randn(v.shape, generator=generator) if v.is_floating_point() else v + k_ + fold)
                 for k, v in init.items()} for k_ in range(3)]
        decay = ema_decay_product(packed.ema_steps, 2, packed.max_decay)
        packed.fold([layout.pack(e) for e in emas], weights, n_steps=2)
        ema_update_(reference, interpolate(emas, weights), decay)
    for name, tensor in reference.items():
        assert torch.equal(packed.state[name], tensor), name
