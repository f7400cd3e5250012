"""The interpolation-path study (benchmarks/accuracy/interpolation_path.py): the path's ends are the learners
exactly, and a point is in the goal box only when it beats its own seed's PGD-AT by the issue's margins."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy" / "interpolation_path.py"


def load_interpolation_path():
    return load_script(SCRIPT, "interpolation_path")


def test_the_path_starts_at_the_linf_learner_ends_at_the_natural_one_and_keeps_integer_buffers():
    path = load_interpolation_path()
    a = {"w": torch.randn(5), "bn.num_batches_tracked": torch.tensor(7)}
    b = {"w": torch.randn(5), "bn.num_batches_tracked": torch.tensor(9)}
    assert torch.equal(path.interpolate(a, b, 0.0)["w"], a["w"])
    assert torch.equal(path.interpolate(a, b, 1.0)["w"], b["w"])
    assert torch.allclose(path.interpolate(a, b, 0.25)["w"], 0.75 * a["w"] + 0.25 * b["w"])
    assert path.interpolate(a, b, 0.5)["bn.num_batches_tracked"].item() == 7


def fake_seed(seed: int, reference: tuple[float, float], points: dict[float, tuple[float, float]]) -> dict:
    def acc(clean, robust):
        return {"clean_acc": clean, "pgd_acc_Linf": robust}

    path = [{"natural_weight": w, "stored": acc(*points.get(w, (0, 0))), "reestimated": acc(*points.get(w, (0, 0)))}
            for w in load_interpolation_path().WEIGHTS]
    return {"seed": seed, "path": path, "pgd_at": {"shipped": acc(*reference), "stored": acc(*reference)},
            "global": {"shipped": acc(0, 0), "stored": acc(0, 0)}, "stored_global_drift": 0.0, "points": 10,
            "pgd_steps": 10}


def goal_column(table: str) -> dict[str, str]:
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| 0.") or line.startswith("| 1.")]
    return {cells[1].strip(): cells[6].strip() for cells in rows}


def test_a_point_is_in_the_goal_box_only_when_every_seed_beats_its_own_pgd_at_by_the_margins():
    path = load_interpolation_path()
    # Seed 0: PGD-AT 40 / 30. Seed 1: PGD-AT 50 / 20.
    results = [fake_seed(0, (40, 30), {0.3: (42, 29), 0.4: (42, 29), 0.5: (41.9, 29)}),
               fake_seed(1, (50, 20), {0.3: (52, 19), 0.4: (52, 18.9), 0.5: (52, 19)})]
    column = goal_column(path.write_table(results, "cmd"))
    assert column["0.3"] == "yes"  # +2 clean at -1 robust in both seeds: on the box's corner
    assert column["0.4"] == "no"   # seed 1 loses 1.1 robust points
    assert column["0.5"] == "no"   # seed 0 gains only 1.9 clean points
    assert column["0.0"] == "no"
