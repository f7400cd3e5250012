"""A real local Ray for the tests in this folder: 127.0.0.1 only, 4 logical CPUs and 3 logical GPUs."""

from __future__ import annotations

import os

import pytest

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
