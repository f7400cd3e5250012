"""benchmarks/sync_overhead.py's column of the sync's own stall: the wait for a peer whose step ended later is
not charged to the sync."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sync_overhead.py"


def load():
    return load_script(SCRIPT, "sync_overhead")


def test_the_syncs_own_stall_runs_from_the_last_arrival_to_the_last_resume():
    bench = load()
    rows = [  # round 0: rank 1 ends its step 0.03 s after rank 0; both resume at 1.05
        {"kind": "redistributing", "round": 0, "rank": 0, "arrived": 1.00, "stall_s": 0.05},
        {"kind": "redistributing", "round": 0, "rank": 1, "arrived": 1.03, "stall_s": 0.02},
        # round 1: rank 0 resumes last, 0.01 s after rank 1's
        {"kind": "redistributing", "round": 1, "rank": 0, "arrived": 2.00, "stall_s": 0.04},
        {"kind": "redistributing", "round": 1, "rank": 1, "arrived": 2.01, "stall_s": 0.02},
        {"kind": "plain", "round": 0, "rank": 0, "arrived": 1.0, "stall_s": 9.0},  # another kind: left out
    ]
    assert bench.after_last_arrival(rows, "redistributing") == pytest.approx([0.02, 0.03])
    # The slowest learner's stall, the other column, holds rank 0's wait for rank 1 in round 0.
    assert max(r["stall_s"] for r in rows[:2]) == pytest.approx(0.05)


def test_the_stall_is_split_into_the_wait_for_the_round_before_and_the_rest():
    bench = load()
    rows = [{"kind": kind, "round": r, "rank": 0, "arrived": float(r), "stall_s": stall, "waited_s": waited,
             "behind": waited > 0}
            for kind in ("plain", "redistributing")
            for r, (stall, waited) in enumerate([(0.010, 0.008), (0.002, 0.0), (0.012, 0.009)])]
    line = bench.stall_parts("collective (test)", rows)
    assert "plain: the round before still running at 2 of 3 syncs, waiting for it 8.00 ms median, " \
           "the rest 2.00 ms median" in line, line
    assert bench.stall_parts("object store", [{"kind": "plain", "stall_s": 0.1}]).endswith("no split (object-store path)")
