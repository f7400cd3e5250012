"""Published run folders are what their names say: one run each, its recipe, its seed, its own evaluations."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
# The scale of the recipes each published study trained (benchmarks/accuracy/protocol.py SCALES).
SCALE_OF = {"accuracy": "small", "converged": "cpu"}


def published_runs() -> list[Path]:
    return sorted(p.parent for p in RESULTS.rglob("config.json") if p.parent.parent.name == "runs")


def scale_of(run: Path) -> str:
    return next(SCALE_OF[part] for part in reversed(run.parts) if part in SCALE_OF)


def contents_digest(run: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(run.glob("*.json*")):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def test_there_are_published_runs_to_check():
    assert len(published_runs()) > 30


def test_no_two_published_run_folders_hold_the_same_files():
    seen: dict[str, Path] = {}
    for run in published_runs():
        digest = contents_digest(run)
        assert digest not in seen, f"{run} holds the same files as {seen[digest]}: one is not what its name says"
        seen[digest] = run


@pytest.mark.parametrize("run", published_runs(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_a_published_run_folder_holds_the_recipe_seed_and_run_its_name_says(run):
    name, _, seed = run.name.rpartition("-seed")
    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == int(seed), f"{run}: config seed {config['seed']}"
    scale = scale_of(run)
    # NAME-seedS holds recipe NAME at the study's scale; d-VARIANT-seedS a documented generalist-d variant.
    expected = f"generalist-d-{scale}" if name.startswith("d-") else f"{name}-{scale}"
    assert config["recipe"] == expected, f"{run}: config recipe {config['recipe']}, expected {expected}"
    # Every evaluation names the run folder it scored; a run trained under another folder name says so.
    trained_as = run / "TRAINED_AS.txt"
    for evaluation in run.glob("eval-*.json"):
        recorded = Path(json.loads(evaluation.read_text())["model"]["run_dir"]).name
        assert recorded == run.name or (trained_as.is_file() and recorded in trained_as.read_text()), (
            f"{evaluation} scored the run folder {recorded!r}; a TRAINED_AS.txt beside it must say why")


def cells(line: str) -> list[str]:
    """A markdown table row's cells, stripped."""
    return [c.strip() for c in line.strip("|").split("|")]


def table_rows_after(readme: str, marker: str) -> list[list[str]]:
    """The rows of the first table after `marker` in the README (header and rule left out)."""
    after = readme.split(marker, 1)[1]
    table = after.split("\n\n", 2)[1]
    return [cells(line) for line in table.splitlines()[2:]]


def paired_difference(study: str, generalist: str, baseline: str) -> dict[str, str]:
    """The study table's first "generalist - baseline" row (the final global as shipped), by column name."""
    lines = study.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"| {generalist} - {baseline} |"))
    header = next(lines[i] for i in range(at, -1, -1) if lines[i].startswith("| difference"))
    return dict(zip(cells(header), cells(lines[at])))


def final_as_shipped(study: str, recipe: str) -> dict[str, str]:
    """One recipe's row of a study file's first table (the final global learner as shipped), by column."""
    lines = study.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("## Final global learner"))
    header = next(line for line in lines[first:] if line.startswith("| run |"))
    row = next(line for line in lines[first:] if line.startswith(f"| {recipe} |"))
    return dict(zip(cells(header), cells(row)))


def test_the_readme_s_model_table_quotes_the_study_tables():
    """The README's table of each recipe's final global is the studies' first table, seeds, means and stds."""
    readme = (RESULTS.parents[1] / "README.md").read_text()
    rows = table_rows_after(readme, "**The models themselves**")
    assert len(rows) == 7
    converged = RESULTS / "accuracy" / "converged"
    for name, seeds, clean, linf, l2 in rows:
        recipe = name.strip("`").removesuffix("-cpu")
        study = (converged / ("study-multinorm.md" if l2 != "-" else "study.md")).read_text()
        row = final_as_shipped(study, recipe)
        assert seeds.replace(" ", "") == row["seeds"], name
        for quoted, column in ((clean, "clean"), (linf, "union"), (l2, "L2")):
            assert quoted == row.get(column, "-"), f"{name}, {column}"


def test_the_readme_s_answer_quotes_the_study_tables_it_names():
    """The one-table answer in the README's Results section is the studies' own paired differences, so a new seed
    in a study table cannot leave the README's answer behind."""
    readme = (RESULTS.parents[1] / "README.md").read_text()
    rows = table_rows_after(readme, "**Does Generalist beat its baselines?")
    assert len(rows) >= 4
    converged = RESULTS / "accuracy" / "converged"
    for name, seeds, clean, linf, l2, _goal in rows:
        generalist, baseline = (part.strip().strip("`").removesuffix("-cpu") for part in name.split(" - "))
        study = (converged / ("study.md" if generalist == "generalist-d" else "study-multinorm.md")).read_text()
        row = paired_difference(study, generalist, baseline)
        assert seeds.replace(" ", "") == row["seeds"], name
        for quoted, column in ((clean, "clean"), (linf, "union"), (l2, "L2")):
            published = row.get(column)
            if published is None:
                assert quoted == "-", f"{name}: {column} is quoted but the study has no such column"
                continue
            assert float(quoted.split(" ± ")[0]) == float(published.split(" ± ")[0]), f"{name}, {column}"
            assert quoted.split(" ± ")[1] == published.split(" ± ")[1].split(" (")[0], f"{name}, {column}"
