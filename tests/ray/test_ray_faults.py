"""The Ray backend survives dead actors: killed learners and a killed coordinator are restarted from the last
checkpoint and the run ends bit-identical to an uninterrupted in-process one. (Its own file, so that under
`make test`'s processes it runs beside the other Ray files instead of after them; tests/ray/test_fault_soak.py,
slow, kills 24 times.)"""

from __future__ import annotations

import time

import pytest

from conftest import assert_same_tensors, fault_injector, final_global, read_jsonl
from generalist.distributed import train

pytestmark = pytest.mark.usefixtures("local_ray")


def test_killed_learners_and_a_killed_coordinator_are_restarted_and_the_run_ends_bit_identical(
        tiny, tmp_path, local_ray):
    """Three deaths in one run (each after the run recovered from the one before): a learner mid-epoch 1, the
    coordinator, then the other learner inside epoch 2. Ray restarts a dead learner's group and a dead coordinator
    (whose new incarnation the learners meet at their next checkpoint or epoch end, and fail over from); every
    restart loads the last checkpoint. tests/ray/test_fault_soak.py (slow) kills 24 times."""
    overrides = ("schedule.epochs=3", "runtime.checkpoint_every_rounds=3")
    train(tiny("generalist-d-small", *overrides), tmp_path / "local", quiet=True)
    events: list[dict] = []
    killer = fault_injector(local_ray, [(7, 1), (13, "coordinator"), (19, 0)], time.time_ns(), events)
    train(tiny("generalist-d-small", *overrides, "runtime.backend=ray", "runtime.max_failures=3"),
          tmp_path / "ray", quiet=True)
    killer.join(timeout=60)
    assert [e["target"] for e in events] == [1, "coordinator", 0], events
    assert all("recovered_s" in e for e in events), events
    assert_same_tensors(final_global(tmp_path / "local"), final_global(tmp_path / "ray"))
    rows = [(r["learner"], r["global_step"]) for r in read_jsonl(tmp_path / "ray" / "metrics" / "rounds.jsonl")]
    assert len(rows) == len(set(rows)), "rounds re-run after a restart were logged twice"
