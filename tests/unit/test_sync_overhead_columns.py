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


def test_the_parts_are_timed_on_the_last_learner_to_arrive():
    bench = load()

    def row(rnd, rank, arrived, gather, fold_end, handed_back, stall):
        return {"kind": "redistributing", "round": rnd, "rank": rank, "arrived": arrived, "stall_s": stall,
                "marks": {"gather": gather, "fold": (gather[1], fold_end)}, "handed_back": handed_back}

    rows = [row(0, 0, 1.000, (1.001, 1.020), 1.040, 1.041, 0.050),  # waits for rank 1: not the one timed
            row(0, 1, 1.010, (1.011, 1.020), 1.040, 1.041, 0.040),
            row(1, 0, 2.000, (2.001, 2.012), 2.032, 2.033, 0.040),
            row(1, 1, 1.990, (1.991, 2.012), 2.032, 2.033, 0.050),
            {"kind": "plain", "round": 0, "rank": 0, "arrived": 0.0, "stall_s": 1.0}]
    line = bench.last_arrival_parts("collective (test)", rows)
    # round 0 timed on rank 1 (gather 1-10, fold to 30, back 31, resumed 40), round 1 on rank 0 (1-12, 32, 33, 40)
    assert line.endswith("median ms after its arrival: gather began 1.0, gather ended 11.0, fold ended 31.0, "
                         "state handed back 32.0, loaded (resumed) 40.0"), line
    assert bench.last_arrival_parts("object store", rows[-1:]).endswith("no parts (object-store path)")
