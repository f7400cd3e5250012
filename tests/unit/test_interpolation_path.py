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

    def interpolate(a, b, w):  # generalist-d's path: linf (w = 0) to natural (w = 1)
        return path.path_point({"linf": a, "natural": b}, ["linf", "natural"], path.PAIRS["generalist-d"], w)

    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"])
    assert torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    assert torch.allclose(interpolate(a, b, 0.25)["w"], 0.75 * a["w"] + 0.25 * b["w"])
    assert interpolate(a, b, 0.5)["bn.num_batches_tracked"].item() == 7


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
        {"0.4": "yes (yes, yes)", "0.5": "no (yes, no)", "0.6": "no (no, yes)", "0.0": "no (no, no)"}
    assert rows["0.5"][9].strip() == "22.95 ± 2.76"  # re-estimated union, mean ± std over the seeds
    path.plot_mn(results, tmp_path / "mn.png")
    assert (tmp_path / "mn.png").stat().st_size > 10_000


def test_the_pair_names_which_learners_the_path_joins_and_its_baseline():
    pairs = load_interpolation_path().PAIRS
    assert (pairs["generalist-d"].start, pairs["generalist-d"].end, pairs["generalist-d"].baseline) == \
        (("linf",), "natural", "pgd-at")
    assert pairs["generalist-d"].weight_key == "natural_weight"  # the key of the published interpolation-path.json
    assert (pairs["generalist-mn"].start, pairs["generalist-mn"].end, pairs["generalist-mn"].baseline) == \
        (("linf",), "l2", "max")
    assert (pairs["generalist-t"].start, pairs["generalist-t"].end, pairs["generalist-t"].baseline) == \
        (("linf", "l2"), "natural", "avg")


def test_generalist_t_s_path_runs_from_its_adversarial_learners_half_each_to_its_natural_one_through_its_global():
    path = load_interpolation_path()
    pair = path.PAIRS["generalist-t"]
    states = {name: {"w": torch.full((3,), value), "bn.num_batches_tracked": torch.tensor(4)}
              for name, value in (("linf", 1.0), ("natural", 4.0), ("l2", 7.0))}
    order = ["linf", "natural", "l2"]  # the recipe's learner order
    assert torch.equal(path.path_point(states, order, pair, 0.0)["w"], torch.full((3,), 4.0))  # (1 + 7) / 2
    assert torch.equal(path.path_point(states, order, pair, 1.0)["w"], torch.full((3,), 4.0 * 1.0))
    assert torch.allclose(path.path_point(states, order, pair, 0.5)["w"], torch.full((3,), 0.25 + 2.0 + 1.75))
    assert pair.learner_weights(0.2) == {"linf": 0.4, "l2": 0.4, "natural": 0.2}
    # Two learners: the point is the two-learner rule's, bit for bit (the published generalist-d path stays as it was).
    from generalist import mixing

    d = path.PAIRS["generalist-d"]
    two = {"linf": states["linf"], "natural": {"w": torch.randn(3), "bn.num_batches_tracked": torch.tensor(2)}}
    assert torch.equal(path.path_point(two, ["linf", "natural"], d, 0.3)["w"],
                       mixing.interpolate([two["linf"], two["natural"]], [1 - 0.3, 0.3])["w"])
    # The global's own final weight joins the grid when it is off it (generalist-t's 1/3), and only then.
    assert path.path_grid(0.6) == path.WEIGHTS
    grid = path.path_grid(1 / 3)
    assert len(grid) == 12 and grid[4] == 1 / 3 and [path.weight_label(w) for w in grid[3:6]] == ["0.3", "0.333", "0.4"]


def test_generalist_t_s_table_compares_each_seed_with_its_own_avg_and_keeps_the_off_grid_row(tmp_path):
    path = load_interpolation_path()
    pair = path.PAIRS["generalist-t"]
    grid = path.path_grid(1 / 3)

    def seed(seed: int, avg_union: float, unions: dict[float, float]) -> dict:
        def acc(union):
            return {"clean_acc": 48.0, "pgd_acc_Linf": 18.0, "pgd_acc_L2": 30.0, "pgd_acc_union": union}

        return {"seed": seed, "path": [{"natural_weight": w, "stored": acc(unions.get(w, 0)),
                                        "reestimated": acc(unions.get(w, 0))} for w in grid],
                "baseline": {"shipped": acc(avg_union), "stored": acc(avg_union)},
                "final_weights": {"linf": 1 / 3, "natural": 1 / 3, "l2": 1 / 3},
                "global": {"shipped": acc(0), "stored": acc(0)}, "stored_global_drift": 0.0, "points": 10,
                "pgd_steps": 10}

    results = [seed(0, 18.0, {0.0: 19.0, 1 / 3: 17.0}), seed(1, 20.0, {0.0: 20.5, 1 / 3: 21.0})]
    table = path.write_table_mn(results, "cmd", pair)
    rows = {cells[1].strip(): cells for cells in (line.split("|") for line in table.splitlines())
            if len(cells) > 2 and cells[1].strip()[:2] in ("0.", "1.")}
    assert len(rows) == 12
    assert {w: rows[w][10].strip() for w in ("0.0", "0.333", "1.0")} == \
        {"0.0": "yes (yes, yes)", "0.333": "no (no, yes)", "1.0": "no (no, no)"}
    assert "| natural weight w |" in table and "union >= AVG (re-est.)" in table and "AVG final global" in table
    assert "w x natural + (1 - w) / 2 x (linf + l2)" in table and "interpolation-path-t.png" in table
    path.plot_mn(results, tmp_path / "t.png", pair)
    assert (tmp_path / "t.png").stat().st_size > 10_000


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


def test_a_path_off_the_global_gives_the_other_learners_no_weight_and_claims_no_global_point():
    path = load_interpolation_path()
    pair = path.PAIRS["generalist-t-linf-l2"]
    assert (pair.recipe, pair.start, pair.end, pair.baseline, pair.through_global) == \
        ("generalist-t", ("linf",), "l2", "avg", False)
    states = {name: {"w": torch.full((2,), value)} for name, value in (("linf", 1.0), ("natural", 4.0), ("l2", 7.0))}
    order = ["linf", "natural", "l2"]
    assert torch.allclose(path.path_point(states, order, pair, 0.5)["w"], torch.full((2,), 4.0))  # (1 + 7) / 2
    assert torch.equal(path.path_point(states, order, pair, 0.0)["w"], states["linf"]["w"])

    def acc(union):
        return {"clean_acc": 46.0, "pgd_acc_Linf": 24.0, "pgd_acc_L2": 35.0, "pgd_acc_union": union}

    result = {"seed": 0, "path": [{"l2_weight": w, "stored": acc(20), "reestimated": acc(26 if w == 0.2 else 20)}
                                  for w in path.WEIGHTS],
              "baseline": {"shipped": acc(25), "stored": acc(25)}, "global": {"shipped": acc(22), "stored": acc(22)},
              "final_weights": {"linf": 1 / 3, "natural": 1 / 3, "l2": 1 / 3}, "points": 10, "pgd_steps": 10}
    table = path.write_table_mn([result], "cmd", pair)
    assert "not on this path" in table and "sits near" not in table and "How far" not in table
    rows = [line.split("|") for line in table.splitlines() if line.startswith(("| 0.", "| 1."))]
    assert len(rows) == 11 and [cells[1].strip() for cells in rows if cells[10].strip() == "yes"] == ["0.2"]


def test_a_table_of_one_seed_says_so_and_one_of_several_gives_their_mean_and_std():
    path = load_interpolation_path()
    assert path.over_seeds([{"seed": 1}]) == "seed 1"
    assert path.over_seeds([{"seed": 0}, {"seed": 2}]) == "mean ± std over seeds 0, 2"
