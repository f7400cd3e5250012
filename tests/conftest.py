"""Shared fixtures: where the real datasets are, and small configs that train in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def find_test_data_root() -> Path:
    """The offline datasets: $GENERALIST_TEST_DATA, else the shared folder beside the checkout."""
    root = Path(os.environ.get("GENERALIST_TEST_DATA", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.fail(f"test datasets not found at {root}; set GENERALIST_TEST_DATA to a folder with CIFAR-10/MNIST")
    return root


@pytest.fixture(scope="session")
def data_root() -> Path:
    return find_test_data_root()


@pytest.fixture(autouse=True, scope="session")
def _dataset_cache(tmp_path_factory):
    """Decoded datasets are cached per test session, never in the user's cache."""
    if "GENERALIST_CACHE" not in os.environ:
        os.environ["GENERALIST_CACHE"] = str(tmp_path_factory.mktemp("dataset-cache"))
    yield


TINY = [
    "data.train_subset=640", "data.val_size=200", "data.batch_size=64", "eval.n_examples=50", "eval.pgd_steps=3",
    "schedule.epochs=3", "runtime.backend=local", "runtime.threads_per_learner=1", "mixing.redistribute_every=1",
]


def tiny_config(recipe: str = "generalist-d-small", *overrides: str, data_root: Path | None = None):
    """A recipe shrunk to seconds: 10 steps an epoch, 3 epochs, PGD-3 in training, 50 validation points."""
    from generalist.config import apply_overrides
    from generalist.recipes import get_recipe

    config = get_recipe(recipe)
    attack_steps = [f"learners.{k}.attack.steps=3" for k, l in enumerate(config.learners) if l.attack is not None]
    root = f'data.root="{data_root or find_test_data_root()}"'
    # A machine that holds only MNIST (a GPU box the 130 MB of CIFAR-10 cannot travel to) runs the same tests on it.
    dataset = [f"data.dataset={os.environ['GENERALIST_TEST_DATASET']}"] if os.environ.get("GENERALIST_TEST_DATASET") \
        else []
    return apply_overrides(config, TINY + attack_steps + [root, *dataset, *overrides])


@pytest.fixture
def tiny():
    return tiny_config


# --- a real local Ray for tests/ray: 127.0.0.1 only, 4 logical CPUs and 3 logical GPUs ---------------
# (one conftest for the whole suite: test modules import helpers from it as `conftest`)

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def local_ray():
    import ray

    # Logical GPUs let placement be tested on a CPU machine: Ray hands out ids, no CUDA is touched.
    ray.init(num_cpus=4, num_gpus=3, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             logging_level="error")
    yield ray
    ray.shutdown()
