"""GPUs are used without being asked: generalist.distributed.placement picks each learner's GPU share from the
cluster's GPU count, and the learners that share a GPU share a worker process (no Ray needed); explicit
settings win. Under 1 s."""

from __future__ import annotations

import pytest

from conftest import tiny_config
from generalist.config import apply_overrides
from generalist.distributed.placement import (config_groups, resolve_gpus, resolve_grouping, with_gpus, with_grouping,
                                              worker_groups, worker_resources)
from generalist.errors import ConfigError


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


def placed(recipe: str, cluster_gpus: float, *overrides: str):
    """The config as the Ray backend places it: GPU share first, then the grouping (ray_backend._place)."""
    c = config(recipe, *overrides)
    c = with_gpus(c, resolve_gpus(c, cluster_gpus)[0])
    return with_grouping(c, resolve_grouping(c)[0])


@pytest.mark.parametrize("recipe, cluster_gpus, groups, gpus_per_worker", [
    ("generalist-d-small", 1, [[0, 1]], 1.0),
    ("generalist-t-small", 1, [[0, 1, 2]], 0.9999),  # 3 x 0.3333: still fits on the one GPU
    ("generalist-t-small", 2, [[0, 1], [2]], 1.0),  # Ray asks the same of every worker: the largest group's
    ("generalist-t-small", 3, [[0], [1], [2]], 1.0),
    ("generalist-t-small", 0, [[0], [1], [2]], 0.0),  # on CPUs, separate processes use separate cores
])
def test_the_learners_that_share_a_gpu_share_one_worker(recipe, cluster_gpus, groups, gpus_per_worker):
    c = placed(recipe, cluster_gpus)
    assert config_groups(c) == groups
    cpus, gpus = worker_resources(c)
    assert gpus == pytest.approx(gpus_per_worker, abs=1e-12)
    assert cpus == max(map(len, groups)) * c.runtime.cpus_per_learner
    assert len(groups) * gpus <= max(cluster_gpus, 0) + 1e-9, "the workers must fit on the cluster's GPUs"


def test_device_cpu_never_groups_and_an_explicit_grouping_wins():
    assert config_groups(placed("generalist-t-small", 1, "runtime.device=cpu")) == [[0], [1], [2]]
    n, line = resolve_grouping(placed("generalist-t-small", 0, "runtime.learners_per_worker=2"))
    assert n == 2 and "as set" in line
    assert config_groups(placed("generalist-t-small", 0, "runtime.learners_per_worker=2")) == [[0, 1], [2]]
    assert config_groups(placed("generalist-d-small", 0, "runtime.learners_per_worker=5")) == [[0, 1]]


def test_worker_groups_keep_learner_order():
    assert worker_groups(5, 2) == [[0, 1], [2, 3], [4]]
    assert worker_groups(3, 1) == [[0], [1], [2]]


def test_a_grouping_whose_gpu_amount_ray_refuses_is_a_clear_error():
    c = placed("generalist-t-small", 8, "runtime.gpus_per_learner=0.75", "runtime.learners_per_worker=2")
    with pytest.raises(ConfigError, match=r"1.5 GPUs per worker"):
        worker_resources(c)


def test_learners_per_worker_below_one_is_refused():
    with pytest.raises(ConfigError, match=r"runtime.learners_per_worker must be >= 1"):
        config("generalist-d-small", "runtime.learners_per_worker=0")
