"""runtime.cuda_graph (generalist.graph_step): where the recorded step applies, and that on a CPU, where it never
does, asking for it changes no number. The graph itself needs a GPU: tests/gpu/test_gpu_training.py."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_same_tensors, final_global, tiny_config
from generalist.config import apply_overrides
from generalist.distributed import train
from generalist.graph_step import use_graph

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize("recipe, overrides, device, expected", [
    ("pgd-at-small", ["runtime.cuda_graph=true"], CUDA, True),
    ("natural-small", ["runtime.cuda_graph=true"], CUDA, True),
    ("pgd-at-small", [], CUDA, False),  # off unless asked for
    ("pgd-at-small", ["runtime.cuda_graph=true"], CPU, False),  # a CPU has no graphs: the eager step
    ("trades-small", ["runtime.cuda_graph=true"], CUDA, False),  # an objective not checked under capture
    ("pgd-at-small", ["runtime.cuda_graph=true", "runtime.compile=true"], CUDA, False),  # compile graphs its own
    ("pgd-at-small", ["runtime.cuda_graph=true", "runtime.deterministic=true"], CUDA, False),  # bit-exact: eager
])
def test_the_graph_step_applies_only_where_it_can(recipe, overrides, device, expected):
    config = apply_overrides(tiny_config(recipe), overrides)
    assert use_graph(config.runtime, config.learners[0], device) is expected


def test_on_a_cpu_asking_for_the_graph_step_changes_no_number(tmp_path):
    train(tiny_config("generalist-d-small", "runtime.backend=local"), tmp_path / "eager", quiet=True)
    train(tiny_config("generalist-d-small", "runtime.backend=local", "runtime.cuda_graph=true"), tmp_path / "asked",
          quiet=True)
    assert_same_tensors(final_global(tmp_path / "eager"), final_global(tmp_path / "asked"))
