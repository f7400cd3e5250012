"""Config validation, recipes and overrides: bad input gets an error that names the fix."""

from __future__ import annotations

import pytest

from generalist.config import RunConfig, apply_overrides, parse_value
from generalist.errors import ConfigError
from generalist.recipes import get_recipe, recipe_names


def test_every_recipe_builds_and_round_trips_through_json():
    for name in recipe_names():
        config = get_recipe(name)
        assert RunConfig.from_dict(config.to_dict()) == config


def test_paper_recipes_follow_the_paper():
    d = get_recipe("generalist-d")
    assert d.model.name == "resnet18" and d.schedule.epochs == 120 and d.data.batch_size == 128
    linf, natural = d.learners
    assert (linf.attack.eps, linf.attack.step_size, linf.attack.steps) == (8 / 255, 2 / 255, 10)
    assert (linf.weight_decay, natural.weight_decay) == (3.5e-3, 5e-4)
    assert (linf.final_weight, natural.final_weight) == (0.4, 0.6)
    assert d.mixing.redistribute_start == 75 / 120 and d.mixing.redistribute_every == 5
    t = get_recipe("generalist-t")
    assert [l.name for l in t.learners] == ["linf", "natural", "l2"]
    assert get_recipe("generalist-mn").learners[1].attack.eps == 0.5


def test_fractions_parse_exactly():
    assert parse_value("8/255") == 8 / 255
    assert parse_value("0.5") == 0.5 and parse_value("true") is True and parse_value("null") is None


def test_overrides_reach_nested_fields_and_learners_by_name_or_index():
    config = apply_overrides(get_recipe("generalist-d"), ["schedule.epochs=10", "learners.linf.attack.eps=4/255",
                                                          "learners.1.lr=0.2"])
    assert config.schedule.epochs == 10
    assert config.learners[0].attack.eps == 4 / 255
    assert config.learners[1].lr == 0.2


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"schedule\.epochs"):
        apply_overrides(get_recipe("generalist-d"), ["schedule.epoch=3"])
    with pytest.raises(ConfigError, match="unknown config key"):
        RunConfig.from_dict({**get_recipe("natural").to_dict(), "sedd": 1})


def test_unknown_recipe_suggests_close_names():
    with pytest.raises(ConfigError, match="generalist-d"):
        get_recipe("generalist-dd")


@pytest.mark.parametrize("override, message", [
    ("learners.linf.attack.eps=0", r"learners\.linf\.attack: attack eps must be > 0"),  # named as overrides spell it
    ("learners.linf.attack.eps=-8/255", "eps must be > 0"),
    ("learners.linf.lr=0", "lr must be > 0"),
    ("learners.linf.lr=-0.1", "lr must be > 0"),
    ("learners.linf.final_weight=0.5", "must sum to 1"),
    ("mixing.sync_every=0", "sync_every must be >= 1"),
    ("model.name=resnet19", "resnet18"),
    ("schedule.epochs=many", "must be an integer"),
])
def test_bad_values_are_refused_with_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_recipe("generalist-d"), [override])


def test_fingerprint_ignores_runtime_placement_but_not_the_algorithm():
    base = get_recipe("generalist-d-small")
    moved = apply_overrides(base, ["runtime.backend=local", "runtime.cpus_per_learner=2"])
    assert moved.fingerprint() == base.fingerprint()
    assert apply_overrides(base, ["mixing.sync_every=10"]).fingerprint() != base.fingerprint()


def test_the_readme_states_the_communication_rule_and_the_clock_of_each_scale():
    """The README's rule for communication epochs names the period and the clock the recipes use (a newcomer
    checks a run's rounds table against it)."""
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    paper, small, cpu = (get_recipe(f"generalist-d{suffix}") for suffix in ("", "-small", "-cpu"))
    assert paper.mixing.redistribute_every == small.mixing.redistribute_every == cpu.mixing.redistribute_every == 5
    assert "every 5th epoch (`mixing.redistribute_every`" in readme
    assert small.schedule.clock_epochs == cpu.schedule.clock_epochs == 120
    assert "clock of 120 equal slices of the run's optimiser steps" in readme


def test_cpu_recipes_keep_the_paper_schedule_with_eight_communication_epochs_in_the_mixing_phase():
    from generalist.mixing import is_communication_epoch

    for name in ("generalist-d-cpu", "generalist-mn-cpu", "generalist-t-cpu", "pgd-at-cpu"):
        config = get_recipe(name)
        assert config.model.name == "small-cnn-wide" and config.data.train_subset is None
        assert config.data.val_size == config.eval.n_examples == 2000
        length = config.schedule.clock_length
        mixing = [e for e in range(1, length + 1) if e > config.mixing.mix_start * length]
        assert sum(is_communication_epoch(e, config) for e in mixing) == 8, name  # 85, 90, ..., 120 as in the paper


def test_generalist_recipes_communicate_once_before_mixing_starts_as_the_paper_does():
    """The paper (E = 120) redistributes in epoch 75, so the learners train five epochs from the global
    weights (and their EMAs follow) before the first mixed epoch, 81. The CPU scales keep that on their clock."""
    from generalist.mixing import is_communication_epoch, mixing_weights

    paper = get_recipe("generalist-d")
    for config in [paper] + [get_recipe(f"{name}-{scale}") for name in ("generalist-d", "generalist-mn", "generalist-t")
                             for scale in ("cpu", "small")]:
        length, anchor = config.schedule.clock_length, config.learner_names.index(config.mixing.anchor)
        first_mixed = min(e for e in range(1, length + 1) if mixing_weights(e, config)[anchor] < 1)
        assert first_mixed == 81, config.recipe
        trained_from_global = [e for e in range(1, first_mixed - 1) if is_communication_epoch(e, config)]
        assert trained_from_global == [75], config.recipe
