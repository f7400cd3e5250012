"""`generalist report`: the Markdown table (mean ± std over seeds per recipe) and the PNG plots, from real runs.

Two tiny runs of one recipe (seeds 0 and 1), each evaluated by `generalist eval` with PGD and a cut-down
AutoAttack on 16 points. About 50 s on 2 cores.
"""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
import torch

from generalist.cli import main
from generalist.mixing import is_communication_epoch
from generalist.report import load_run, schedule_marks

QUICK = ["--aa-option=apgd.n_iter=5", "--aa-option=apgd_targeted.n_iter=5", "--aa-option=apgd_targeted.n_target_classes=2",
         "--aa-option=fab.n_iter=5", "--aa-option=fab.n_target_classes=2", "--aa-option=square.n_queries=20"]


_RUNS: list = []


@pytest.fixture
def runs(tiny, tmp_path_factory, data_root):
    """Two tiny runs for the whole module (cached here: `tiny` is a function-scoped fixture)."""
    if not _RUNS:
        _RUNS.extend(_train_and_evaluate(tiny, tmp_path_factory, data_root))
    return _RUNS


def _train_and_evaluate(tiny_config, tmp_path_factory, data_root):
    from generalist.distributed import train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("report")
    folders = []
    try:
        for seed in (0, 1):
            folder = base / f"seed{seed}"
            train(tiny_config("generalist-d-small", f"seed={seed}", data_root=data_root), folder, quiet=True)
            code = main(["eval", str(folder), "--n", "16", "--batch-size", "16", "--pgd-steps", "3", "--threat",
                         "Linf", "--threat", "L2", "--data-root", str(data_root), "--quiet", *QUICK])
            assert code == 0
            folders.append(folder)
    finally:
        torch.set_num_threads(before)
    return folders


def _row(report: str, *cells: str) -> list[str]:
    for line in report.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if parts[:len(cells)] == list(cells):
            return parts
    raise AssertionError(f"no row starting {cells} in:\n{report}")


def test_the_table_groups_seeds_of_a_recipe_with_mean_and_std(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    records = [json.loads((run / "eval" / "global" / "eval.json").read_text()) for run in runs]
    row = _row(report, "generalist-d-small", "global")
    assert row[2:5] == ["2", "16", "custom AA"]  # two seeds, 16 points, not standard AutoAttack

    def expected(values):
        values = [float(v) for v in values]
        return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"

    assert row[5] == expected(r["clean_acc"] for r in records)
    assert row[6] == expected(r["threats"]["Linf"]["autoattack_acc"] for r in records)
    assert row[7] == expected(r["threats"]["L2"]["autoattack_acc"] for r in records)
    assert row[8] == expected(r["union_acc"] for r in records)
    # the validation table comes from metrics/epochs.parquet of both seeds
    val = _row(report.split("## Validation")[1], "generalist-d-small", "global")
    last = [load_run(r).last_validation()["global"] for r in runs]
    assert val[2] == "2" and val[4] == expected(100 * v["clean_acc"] for v in last)


def test_runs_of_one_recipe_with_another_setting_are_not_averaged_together(runs, tmp_path):
    variant = tmp_path / "variant"
    shutil.copytree(runs[1], variant)
    config = json.loads((variant / "config.json").read_text())
    config["schedule"]["epochs"] = 4  # as if trained longer: not a seed of the same setting
    (variant / "config.json").write_text(json.dumps(config))
    out = tmp_path / "report"
    assert main(["report", str(runs[0]), str(variant), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert _row(report, "generalist-d-small (variant 1)", "global")[2] == "1"
    assert _row(report, "generalist-d-small (variant 2)", "global")[2] == "1"
    assert "schedule.epochs=4" in report


def test_the_plots_are_written_as_real_images(runs, tmp_path):
    import matplotlib.image

    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    for name, min_width in (("tradeoff.png", 900), ("curves-seed0.png", 1200), ("curves-seed1.png", 1200)):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        image = matplotlib.image.imread(out / name)
        assert image.shape[1] >= min_width and image[..., :3].std() > 0.05, name  # drawn on, not blank
    assert "![trade-off](tradeoff.png)" in (out / "report.md").read_text()


def test_redistributions_are_marked_where_the_rounds_table_says_they_happened(runs, tiny):
    run = load_run(runs[0])
    config = tiny("generalist-d-small")
    redistributed, communication, spe = schedule_marks(run)
    assert communication == [e for e in range(1, config.schedule.epochs + 1) if is_communication_epoch(e, config)]
    assert redistributed == communication and redistributed  # sync_every=1: every communication epoch redistributes
    assert spe == 10  # 640 training points in batches of 64
    weights = {r["epoch"]: r["weight"] for r in run.round_rows if r["learner"] == "linf"}
    assert weights[1] == 1.0 and weights[config.schedule.epochs] == pytest.approx(0.4)  # the beta schedule


def test_a_folder_that_is_not_a_run_is_one_clear_line(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a run folder" in err
