"""Evaluation sharded over Ray tasks gives the numbers of one process, and fails as our own errors.

Uses the session's local Ray (tests/ray/conftest.py: 127.0.0.1, logical CPUs). About 60 s on 2 cores: one tiny
training run, then PGD + cut-down AutoAttack on 32 points, once in-process and once over 2 tasks.
"""

from __future__ import annotations

import pytest
import torch

from generalist.data import load_split
from generalist.distributed.sharded_eval import evaluate_sharded, shard_blocks
from generalist.errors import CheckpointError
from generalist.evaluation.model_loading import build_eval_model, load_model
from generalist.evaluation.run import evaluate_points
from generalist.evaluation.spec import EvalSpec
from generalist.evaluation.threat_spec import ThreatSpec

QUICK_AA = {"apgd.n_iter": 10, "apgd_targeted.n_iter": 10, "apgd_targeted.n_target_classes": 3,
            "fab.n_iter": 10, "fab.n_target_classes": 3, "square.n_queries": 50}


def test_blocks_are_split_into_contiguous_nearly_equal_shards():
    assert shard_blocks([0, 8, 16, 24, 32], 2) == [[0, 8, 16], [24, 32]]
    assert shard_blocks([0, 8], 5) == [[0], [8]]  # never an empty shard


def test_sharded_evaluation_gives_the_same_numbers_as_one_process(local_ray, tiny, data_root, tmp_path):
    from generalist.distributed import train

    train(tiny("generalist-d-small"), tmp_path / "run", quiet=True)
    trained = load_model(tmp_path / "run")
    test = load_split("cifar10", data_root, train=False)
    spec = EvalSpec(threats=[ThreatSpec.parse("Linf"), ThreatSpec.parse("L2")], n=32, batch_size=8, pgd_steps=5,
                    aa_options=QUICK_AA)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the shards run 1 thread each: CPU sums depend on the thread count
    try:
        one = evaluate_points(trained.model, test, spec)
    finally:
        torch.set_num_threads(before)
    sharded = evaluate_sharded(trained.model.state_dict(), "small-cnn", "cifar10", test, spec, shards=2,
                               state_dir=tmp_path / "state", threads=1)
    assert sharded.table == one.table
    assert sharded.table["index"] == list(range(32))
    assert len(list((tmp_path / "state" / "blocks").glob("*-clean.json"))) == 4  # every block, written by the tasks
    assert set(sharded.seconds) == {"Linf", "L2"} and all(s > 0 for s in sharded.seconds["Linf"].values())
    # a rerun finds every block finished and gives the same table
    assert evaluate_sharded(trained.model.state_dict(), "small-cnn", "cifar10", test, spec, shards=2,
                            state_dir=tmp_path / "state", threads=1).table == one.table


def test_an_error_inside_a_shard_surfaces_as_our_own_one_line_error(local_ray, data_root):
    test = load_split("cifar10", data_root, train=False)
    small_cnn, _ = build_eval_model("small-cnn", "cifar10")
    spec = EvalSpec(threats=[ThreatSpec.parse("Linf")], n=8, batch_size=4, pgd_steps=1, autoattack="none")
    with pytest.raises(CheckpointError, match="is not a resnet18 checkpoint") as error:
        evaluate_sharded(small_cnn.state_dict(), "resnet18", "cifar10", test, spec, shards=2, threads=1,
                         max_retries=0)
    assert "\n" not in str(error.value)
