"""The study's tables combine a run's evaluations point by point (benchmarks/accuracy/tables.py).

A point is robust under a threat only if every evaluation that ran that threat left it robust, and in the
union only if it is robust under every threat; an evaluation can only lower a number, never raise it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import load_script

TABLES = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy" / "tables.py"


def load_tables():
    return load_script(TABLES, "study_tables")


def write_eval(folder: Path, clean: list[bool], robust: dict[str, list[bool]], autoattack: bool) -> None:
    folder.mkdir(parents=True)
    rows = {"index": list(range(len(clean))), "model": ["global"] * len(clean), "clean_correct": clean}
    rows.update({f"{norm}_robust": flags for norm, flags in robust.items()})
    pq.write_table(pa.table(rows), folder / "points.parquet")
    threats = {norm: {"pgd_acc": "0", **({"autoattack_acc": "0"} if autoattack else {})} for norm in robust}
    (folder / "eval.json").write_text(json.dumps({"threats": threats}))


def test_worst_case_over_evaluations_and_union(tmp_path):
    tables = load_tables()
    run = tmp_path / "pgd-at-seed0"
    clean = [True, True, True, True, False]
    # PGD on two threats: points 0-2 survive Linf, points 0, 1, 3 survive L2.
    write_eval(run / "eval" / "aa-none", clean,
               {"Linf": [True, True, True, False, False], "L2": [True, True, False, True, False]}, autoattack=False)
    # AutoAttack on Linf alone breaks point 1 as well, and "keeps" point 3, which PGD had already broken.
    write_eval(run / "eval" / "aa-standard-Linf", clean,
               {"Linf": [True, False, True, True, False]}, autoattack=True)

    combined = tables.combine_run(run, "pgd-at", 0)

    assert combined.n == 5
    assert combined.clean == 80.0
    assert combined.robust["Linf"] == 40.0  # points 0 and 2: the worst case, not the last evaluation
    assert combined.robust["L2"] == 60.0
    assert combined.robust["union"] == 20.0  # point 0 alone survives everything
    assert combined.attacks == {"Linf": "AA + PGD-20", "L2": "PGD-20"}
    pgd_only = tables.combine_run(run, "pgd-at", 0, only=("aa-none",))
    assert pgd_only.robust == {"Linf": 60.0, "L2": 60.0, "union": 40.0}


def published(run: Path, published_copy: Path, with_points: bool) -> None:
    """The committed copy of a run's evaluations (protocol.publish's layout), with or without per-point results."""
    published_copy.mkdir(parents=True)
    for folder in (run / "eval").iterdir():
        (published_copy / f"eval-{folder.name}.json").write_bytes((folder / "eval.json").read_bytes())
        if with_points:
            points = (folder / "points.parquet").read_bytes()
            (published_copy / f"eval-{folder.name}.points.parquet").write_bytes(points)


def test_a_published_copy_with_points_combines_like_its_run_folder(tmp_path):
    tables = load_tables()
    run = tmp_path / "runs" / "pgd-at-seed0"
    clean = [True, True, True, False]
    write_eval(run / "eval" / "aa-none", clean, {"Linf": [True, True, False, False]}, autoattack=False)
    write_eval(run / "eval" / "aa-standard-Linf", clean, {"Linf": [False, True, True, False]}, autoattack=True)
    published(run, tmp_path / "published" / "pgd-at-seed0", with_points=True)

    copy = tables.combine_run(tmp_path / "published" / "pgd-at-seed0", "pgd-at", 0)

    assert copy == tables.combine_run(run, "pgd-at", 0)
    assert copy.robust["Linf"] == 25.0  # point 1 alone survives both evaluations
    assert tables.checkpoint_folders(tmp_path / "published" / "pgd-at-seed0", "final") == ("aa-none",
                                                                                            "aa-standard-Linf")


def test_a_published_copy_without_points_gives_its_one_evaluations_own_numbers(tmp_path):
    tables = load_tables()
    copy = tmp_path / "max-seed0"
    copy.mkdir()
    record = {"n_examples": 1000, "clean_acc": "45.60", "union_acc": "19.50",
              "threats": {"Linf": {"autoattack_acc": "21.00", "robust_acc": "20.90"},
                          "L2": {"autoattack_acc": "30.70", "robust_acc": "30.70"}}}
    (copy / "eval-aa-standard-Linf+L2.json").write_text(json.dumps(record))

    combined = tables.combine_run(copy, "max", 0)

    assert (combined.n, combined.clean) == (1000, 45.6)
    assert combined.robust == {"Linf": 20.9, "L2": 30.7, "union": 19.5}  # robust_acc: the worst case per point
    assert combined.attacks == {"Linf": "AA + PGD-20", "L2": "AA + PGD-20"}
    (copy / "eval-aa-none.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="cannot be combined point by point"):
        tables.combine_run(copy, "max", 0)  # two evaluations of one checkpoint need their points


def test_final_and_best_checkpoint_evaluations_are_never_combined(tmp_path):
    tables = load_tables()
    run = tmp_path / "generalist-d-seed0"
    clean = [True, True, True, False]
    write_eval(run / "eval" / "aa-standard-Linf", clean, {"Linf": [True, True, False, False]}, autoattack=True)
    write_eval(run / "eval" / "best-aa-standard-Linf", clean, {"Linf": [False, True, True, False]}, autoattack=True)
    assert tables.checkpoint_folders(run, "final") == ("aa-standard-Linf",)
    assert tables.checkpoint_folders(run, "best") == ("best-aa-standard-Linf",)
    final = tables.combine_run(run, "generalist-d", 0, tables.checkpoint_folders(run, "final"))
    best = tables.combine_run(run, "generalist-d", 0, tables.checkpoint_folders(run, "best"))
    assert final.robust["Linf"] == best.robust["Linf"] == 50.0  # combined, they would give 25.0


def test_table_is_mean_and_std_over_seeds(tmp_path):
    tables = load_tables()
    runs = []
    for seed, flags in enumerate([[True, True, False, False], [True, False, False, False]]):
        run = tmp_path / f"avg-seed{seed}"
        write_eval(run / "eval" / "aa-none", [True] * 4, {"Linf": flags}, autoattack=False)
        runs.append(tables.combine_run(run, "avg", seed))

    table = tables.accuracy_table(runs)

    row = next(line for line in table.splitlines() if line.startswith("| avg"))
    assert "| 0,1 | 4 | 100.00 ± 0.00 | 37.50 ± 17.68 | 37.50 ± 17.68 |" in row


def test_run_without_evaluation_is_left_out(tmp_path):
    assert load_tables().combine_run(tmp_path / "natural-seed0", "natural", 0) is None


def test_identical_variants_are_found(tmp_path):
    tables = load_tables()
    runs = []
    for name, flags in [("d-sync100", [True, False]), ("d-sync-epoch", [True, False]), ("d-sync10", [True, True])]:
        run = tmp_path / f"{name}-seed0"
        write_eval(run / "eval" / "aa-none", [True, True], {"Linf": flags}, autoattack=False)
        runs.append(tables.combine_run(run, name, 0))

    assert tables.identical_groups(runs) == [["d-sync100", "d-sync-epoch"]]


def test_differences_are_paired_by_seed_and_show_each_seed(tmp_path):
    tables = load_tables()
    C = tables.Combined
    runs = [C("pgd-at", 0, 1000, 44.0, {"Linf": 20.0, "union": 20.0}),
            C("pgd-at", 1, 1000, 46.0, {"Linf": 22.0, "union": 22.0}),
            C("pgd-at", 2, 1000, 45.0, {"Linf": 21.0, "union": 21.0}),  # no generalist-d seed 2: not paired
            C("generalist-d", 0, 1000, 40.0, {"Linf": 19.0, "union": 19.0}),
            C("generalist-d", 1, 1000, 46.0, {"Linf": 20.0, "union": 20.0})]

    table = tables.difference_table(runs).splitlines()

    assert len(table) == 3  # header, rule, one pair: trades has no runs
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    # Seed 0: 40 - 44 = -4, seed 1: 46 - 46 = 0; seed 2 has no generalist-d run and is left out.
    assert cells[:3] == ["generalist-d - pgd-at", "0,1", "-2.00 ± 2.83 (-4.0, +0.0)"]
    assert cells[3] == "-1.50 ± 0.71 (-1.0, -2.0)"
    assert tables.difference_table([r for r in runs if r.name == "pgd-at"]) is None


def test_a_trade_off_axis_spans_at_least_the_noise_of_its_points():
    widened = load_tables().widened
    assert widened(45.5, 45.6) == (45.55 - 2.0, 45.55 + 2.0)  # two runs 0.1 apart: not at opposite corners
    assert widened(12.9, 21.5) == (12.9, 21.5)  # a real gap keeps its own limits


def test_a_seeds_difference_is_shown_with_the_points_that_decide_it(tmp_path):
    tables = load_tables()
    runs = []
    for name, clean, linf, l2 in (("generalist-mn", [True, True, True, False], [True, True, True, False],
                                   [True, False, False, False]),
                                  ("max", [True, True, False, True], [True, False, False, False],
                                   [False, False, False, True])):
        write_eval(tmp_path / name / "eval" / "aa-standard-Linf+L2", clean, {"Linf": linf, "L2": l2}, autoattack=True)
        runs.append(tables.combine_run(tmp_path / name, name, 0))

    (row,) = [line for line in tables.point_pairs_table(runs).splitlines() if line.startswith("| generalist-mn")]

    cells = [c.strip() for c in row.strip("|").split("|")]
    # clean: point 2 in mn only, point 3 in max only; Linf: points 1 and 2 in mn only; union: point 0 in mn only.
    assert cells == ["generalist-mn - max", "0", "+0.0 (1 / 1)", "+50.0 (2 / 0)", "+0.0 (1 / 1)", "+25.0 (1 / 0)"]
    without_points = [tables.Combined(r.name, r.seed, r.n, r.clean, r.robust) for r in runs]  # published before
    assert tables.point_pairs_table(without_points) is None
