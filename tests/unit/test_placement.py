"""GPUs are used without being asked: generalist.distributed.placement picks each learner's GPU share from the
cluster's GPU count (no Ray needed), and explicit settings win. Under 1 s."""

from __future__ import annotations

import pytest

from conftest import tiny_config
from generalist.config import apply_overrides
from generalist.distributed.placement import resolve_gpus, with_gpus


def config(recipe: str, *overrides: str):
    return tiny_config(recipe, "runtime.backend=ray", *overrides)


@pytest.mark.parametrize("recipe, k", [("pgd-at-small", 1), ("generalist-d-small", 2), ("generalist-t-small", 3)])
@pytest.mark.parametrize("cluster_gpus", [3, 4, 8])
def test_every_learner_gets_its_own_gpu_when_the_cluster_has_enough(recipe, k, cluster_gpus):
    gpus, line = resolve_gpus(config(recipe), cluster_gpus)
    assert gpus == 1.0
    assert "one GPU each" in line and f"{k} learner" in line


@pytest.mark.parametrize("recipe, cluster_gpus, share", [
    ("generalist-d-small", 1, 0.5),
    ("generalist-t-small", 1, 0.3333),  # rounded down: 3 x 0.3333 fits on one GPU, 3 x 0.33334 would not
    ("generalist-t-small", 2, 0.5),  # 2/3 each would leave the third learner without room on either GPU
])
def test_fewer_gpus_than_learners_are_shared_in_shares_that_pack(recipe, cluster_gpus, share):
    gpus, line = resolve_gpus(config(recipe), cluster_gpus)
    assert gpus == pytest.approx(share, abs=1e-12)
    k = len(config(recipe).learners)
    per_gpu = int(1 / gpus + 1e-9)
    assert per_gpu * cluster_gpus >= k, "every learner must find room on some GPU"
    assert "share" in line and f"{gpus:g} GPU each" in line


def test_without_gpus_the_learners_stay_on_the_cpu():
    gpus, line = resolve_gpus(config("generalist-t-small"), 0)
    assert gpus == 0.0 and "CPU" in line


def test_device_cpu_asks_for_no_gpu_even_on_a_gpu_cluster():
    gpus, line = resolve_gpus(config("generalist-d-small", "runtime.device=cpu"), 8)
    assert gpus == 0.0 and "runtime.device=cpu" in line


def test_device_cuda_on_a_cluster_without_gpus_asks_for_them_instead_of_using_cpus():
    gpus, line = resolve_gpus(config("generalist-d-small", "runtime.device=cuda"), 0)
    assert gpus == 1.0 and "runtime.device=auto" in line


@pytest.mark.parametrize("explicit, cluster_gpus", [("0", 4), ("1", 1), ("0.25", 8), ("2", 8)])
def test_an_explicit_gpus_per_learner_wins(explicit, cluster_gpus):
    gpus, line = resolve_gpus(config("generalist-t-small", f"runtime.gpus_per_learner={explicit}"), cluster_gpus)
    assert gpus == float(explicit) and "as set" in line


def test_the_default_is_automatic_and_null_restores_it():
    assert config("generalist-d-small").runtime.gpus_per_learner is None
    one = apply_overrides(config("generalist-d-small"), ["runtime.gpus_per_learner=1"])
    assert apply_overrides(one, ["runtime.gpus_per_learner=null"]).runtime.gpus_per_learner is None


def test_with_gpus_gives_a_validated_copy_for_the_workers():
    original = config("generalist-t-small")
    resolved = with_gpus(original, 0.3333)
    assert resolved.runtime.gpus_per_learner == 0.3333 and original.runtime.gpus_per_learner is None
    assert resolved.fingerprint() == original.fingerprint(), "placement never changes what a checkpoint resumes"
