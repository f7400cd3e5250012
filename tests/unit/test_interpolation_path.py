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


def fake_multi_norm_seed(seed: int, max_union: float, unions: dict[float, float]) -> dict:
    def acc(union):
        return {"clean_acc": 45.0, "pgd_acc_Linf": 20.0, "pgd_acc_L2": 30.0, "pgd_acc_union": union}

    path = [{"l2_weight": w, "stored": acc(unions.get(w, 0)), "reestimated": acc(unions.get(w, 0))}
            for w in load_interpolation_path().WEIGHTS]
    return {"seed": seed, "path": path, "baseline": {"shipped": acc(max_union), "stored": acc(max_union)},
            "final_weights": {"linf": 0.5, "l2": 0.5},
            "global": {"shipped": acc(0), "stored": acc(0)}, "stored_global_drift": 0.0, "points": 10,
            "pgd_steps": 10}


def test_the_multi_norm_path_beats_max_only_where_every_seeds_union_reaches_its_own_maxs(tmp_path):
    path = load_interpolation_path()
    results = [fake_multi_norm_seed(0, 20.0, {0.4: 20.0, 0.5: 21.0, 0.6: 19.9}),
               fake_multi_norm_seed(1, 25.0, {0.4: 25.5, 0.5: 24.9, 0.6: 26.0})]
    table = path.write_table_mn(results, "cmd")
    rows = {cells[1].strip(): cells for cells in (line.split("|") for line in table.splitlines())
            if len(cells) > 2 and cells[1].strip()[:2] in ("0.", "1.")}
    assert {w: rows[w][10].strip() for w in ("0.4", "0.5", "0.6", "0.0")} == \
        {"0.4": "yes", "0.5": "no", "0.6": "no", "0.0": "no"}
    assert rows["0.5"][9].strip() == "22.95 ± 2.76"  # re-estimated union, mean ± std over the seeds
    path.plot_mn(results, tmp_path / "mn.png")
    assert (tmp_path / "mn.png").stat().st_size > 10_000


def test_the_pair_names_which_learners_the_path_joins_and_its_baseline():
    pairs = load_interpolation_path().PAIRS
    assert (pairs["generalist-d"].start, pairs["generalist-d"].end, pairs["generalist-d"].baseline) == \
        ("linf", "natural", "pgd-at")
    assert pairs["generalist-d"].weight_key == "natural_weight"  # the key of the published interpolation-path.json
    assert (pairs["generalist-mn"].start, pairs["generalist-mn"].end, pairs["generalist-mn"].baseline) == \
        ("linf", "l2", "max")


def test_a_seed_without_its_run_folders_is_one_error_and_a_finished_seed_needs_none(tmp_path, capsys):
    import json

    import pytest

    path = load_interpolation_path()
    with pytest.raises(SystemExit) as stop:
        path.main(["--recipe", "generalist-mn", "--seeds", "1", "--runs", str(tmp_path / "runs"),
                   "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "generalist-mn-seed1" in capsys.readouterr().err
    # The published generalist-d seeds are rebuilt from their JSON alone (the run folders are long gone).
    published = SCRIPT.parents[2] / "benchmarks" / "results" / "accuracy" / "converged" / "interpolation-path.json"
    (tmp_path / "interpolation-path.json").write_text(published.read_text())
    seeds = [str(r["seed"]) for r in json.loads(published.read_text())]
    assert path.main(["--seeds", *seeds, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "interpolation-path.md").read_text() == published.with_suffix(".md").read_text()
