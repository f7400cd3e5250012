"""The study's protocol (benchmarks/accuracy/protocol.py) resumes what was interrupted: a run folder with a
config continues with --resume, and one that never reached its first checkpoint starts over instead of failing
(seed 2 of the converged study once stopped there: `--resume` alone refuses a folder without a checkpoint)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import load_script

PROTOCOL = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy" / "protocol.py"


def load_protocol():
    return load_script(PROTOCOL, "study_protocol")


def commands_of_train_one(tmp_path, monkeypatch, make_folder) -> list[list[str]]:
    protocol = load_protocol()
    seen = []
    monkeypatch.setattr(protocol, "run", lambda command, log_path: seen.append(command))
    run_dir = tmp_path / "pgd-at-seed2"
    make_folder(run_dir)
    protocol.train_one("pgd-at", "pgd-at", 2, [], tmp_path, protocol.SCALES["cpu"])
    return seen


def test_a_new_run_starts_without_resume(tmp_path, monkeypatch):
    (command,) = commands_of_train_one(tmp_path, monkeypatch, lambda d: None)
    assert "--resume" not in command and "--restart-if-no-checkpoint" not in command


def test_an_interrupted_run_resumes_and_starts_over_if_it_never_checkpointed(tmp_path, monkeypatch):
    def interrupted(run_dir):
        run_dir.mkdir()
        (run_dir / "config.json").write_text("{}")

    (command,) = commands_of_train_one(tmp_path, monkeypatch, interrupted)
    assert command[-2:] == ["--resume", "--restart-if-no-checkpoint"]


def test_a_finished_run_is_not_trained_again(tmp_path, monkeypatch):
    def finished(run_dir):
        (run_dir / "final").mkdir(parents=True)
        (run_dir / "final" / "global.pt").write_bytes(b"")

    assert commands_of_train_one(tmp_path, monkeypatch, finished) == []


def evaluated_multi_norm_runs(protocol, runs: Path) -> None:
    """Seed 0 of generalist-mn and max, each with one final evaluation (Linf and L2) of four points."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, robust in (("generalist-mn", [True, True, False, False]), ("max", [True, False, False, False])):
        folder = runs / f"{name}-seed0" / "eval" / protocol.eval_tag("standard", ["Linf", "L2"])
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"index": [0, 1, 2, 3], "model": ["global"] * 4, "clean_correct": [True] * 4,
                                 "Linf_robust": robust, "L2_robust": robust}), folder / "points.parquet")
        (folder / "eval.json").write_text(json.dumps({"threats": {t: {"pgd_acc": "0", "autoattack_acc": "0"}
                                                                  for t in ("Linf", "L2")}}))


def test_the_multi_norm_tables_sit_beside_the_generalist_d_tables_not_over_them(tmp_path):
    protocol = load_protocol()
    runs, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    (results / "study.md").write_text("the generalist-d study")
    evaluated_multi_norm_runs(protocol, runs)

    protocol.write_converged_study(runs, results, ["generalist-mn", "max"], [0], study="study-multinorm")

    assert (results / "study.md").read_text() == "the generalist-d study"
    written = (results / "study-multinorm.md").read_text()
    assert "--recipes generalist-mn max --study study-multinorm" in written
    assert "generalist-mn - max" in written  # the paired difference the multi-norm claim is about
    assert (results / "study-multinorm-tradeoff-final.png").is_file()


@pytest.mark.parametrize("phase", ["train", "eval", "run"])
def test_a_train_or_eval_phase_writes_no_table_over_a_published_study(tmp_path, monkeypatch, phase):
    protocol = load_protocol()
    results = tmp_path / "results"
    results.mkdir()
    (results / "study.md").write_text("the generalist-d study")
    evaluated_multi_norm_runs(protocol, tmp_path / "runs")  # what made the chain's train phase write a table
    monkeypatch.setattr(protocol, "train_one", lambda name, recipe, seed, overrides, runs, scale: runs / name)
    monkeypatch.setattr(protocol, "publish", lambda run_dir, results: None)
    monkeypatch.setattr(protocol, "evaluation_plan", lambda run_dirs, checkpoints: [])
    monkeypatch.setattr(sys, "argv", ["protocol.py", "--scale", "cpu", "--phase", phase, "--recipes",
                                      "generalist-mn", "max", "--seeds", "0", "--runs", str(tmp_path / "runs"),
                                      "--results", str(results)])
    protocol.main()
    assert sorted(p.name for p in results.iterdir()) == ["study.md"]
    assert (results / "study.md").read_text() == "the generalist-d study"


def test_the_tables_are_rebuilt_from_the_published_copies_once_the_run_folders_are_gone(tmp_path):
    """The machines that train the study keep nothing between sessions: what publish commits must be enough."""
    import shutil

    protocol = load_protocol()
    runs, results = tmp_path / "runs", tmp_path / "results"
    evaluated_multi_norm_runs(protocol, runs)
    for name in ("generalist-mn", "max"):
        run_dir = runs / f"{name}-seed0"
        (run_dir / "final").mkdir()
        (run_dir / "final" / "summary.json").write_text("{}")  # publish copies finished runs only
        (run_dir / "config.json").write_text("{}")
        protocol.publish(run_dir, results)
    tag = protocol.eval_tag("standard", ["Linf", "L2"])
    assert (results / "runs" / "max-seed0" / f"eval-{tag}.points.parquet").is_file()
    protocol.write_converged_study(runs, results, ["generalist-mn", "max"], [0], study="from-run-folders")
    shutil.rmtree(runs)

    protocol.write_converged_study(runs, results, ["generalist-mn", "max"], [0], study="from-published")

    def tables_of(study):
        return [line for line in (results / f"{study}.md").read_text().splitlines() if line.startswith("|")]

    assert tables_of("from-published") == tables_of("from-run-folders")
    assert any(line.startswith("| generalist-mn - max") for line in tables_of("from-published"))


def test_evaluations_run_most_wanted_first_and_a_best_that_is_final_waits_for_it(tmp_path, monkeypatch):
    """Every run's final global learner as shipped comes before any best or stored-statistics one; a best
    checkpoint identical to the final one is chained behind it (a copy), never evaluated beside it."""
    import json

    protocol = load_protocol()
    a, b, c = (tmp_path / name for name in ("a-seed0", "b-seed0", "c-seed0"))
    for run_dir, bn in ((a, "reestimate"), (b, "reestimate"), (c, "interpolate")):
        run_dir.mkdir()
        (run_dir / "config.json").write_text(json.dumps({"mixing": {"global_bn": bn}}))
    monkeypatch.setattr(protocol, "best_is_final", lambda run_dir: run_dir == a)

    plan = protocol.evaluation_plan([a, b, c], ["final", "best"])

    assert plan == [[(a, "final", "auto"), (a, "best", "auto")], [(b, "final", "auto")], [(c, "final", "auto")],
                    [(b, "best", "auto")], [(c, "best", "auto")],
                    [(a, "last", "saved"), (a, "best", "saved")], [(b, "last", "saved")], [(b, "best", "saved")]]


def test_a_runs_evaluations_start_when_its_own_training_ends_not_when_every_training_has():
    """Run a trains fast and b slowly: a's final evaluation runs while b still trains (it must, or b's
    training, which waits for it, would time out)."""
    import threading

    protocol = load_protocol()
    a_evaluated, calls = threading.Event(), []

    def train(job):
        calls.append(("train", job))
        if job == "b" and not a_evaluated.wait(timeout=30):
            raise RuntimeError("a's evaluation waited for b's training")
        return Path(job)

    def chains_of(run_dir):
        return [[(run_dir, "final", "auto"), (run_dir, "best", "auto")], [(run_dir, "last", "saved")]]

    def evaluate(chain):
        calls.append(("eval", str(chain[0][0]), chain[0][1]))
        if chain[0][:2] == (Path("a"), "final"):
            a_evaluated.set()

    failures = protocol.train_then_evaluate(["a", "b"], train, chains_of, evaluate, workers=2,
                                            checkpoints=["final", "best"], label=str)

    assert failures == []
    assert sorted(c for c in calls if c[0] == "train") == [("train", "a"), ("train", "b")]
    assert sorted(c for c in calls if c[0] == "eval") == [("eval", "a", "final"), ("eval", "a", "last"),
                                                          ("eval", "b", "final"), ("eval", "b", "last")]


def test_one_worker_takes_each_final_evaluation_before_the_next_training_and_the_best_ones_last():
    protocol = load_protocol()
    calls = []

    def chains_of(run_dir):
        return [[(run_dir, "best", "auto")], [(run_dir, "final", "auto")]]  # a stage's rank, not the list, orders

    failures = protocol.train_then_evaluate(
        ["a", "b", "c"], lambda job: calls.append(job) or Path(job), chains_of,
        lambda chain: calls.append(f"{chain[0][0]} {chain[0][1]}"), workers=1, checkpoints=["final", "best"],
        label=str)

    assert failures == []
    assert calls == ["a", "a final", "b", "b final", "c", "c final", "a best", "b best", "c best"]


def test_a_failed_training_is_reported_and_the_other_runs_go_on():
    protocol = load_protocol()
    evaluated = []

    def train(job):
        if job == "a":
            raise RuntimeError("diverged")
        return Path(job)

    failures = protocol.train_then_evaluate(
        ["a", "b"], train, lambda run_dir: [[(run_dir, "final", "auto")]],
        lambda chain: evaluated.append(str(chain[0][0])), workers=2, checkpoints=["final"], label=str)

    assert failures == ["a: diverged"]
    assert evaluated == ["b"]


def test_a_seeds_evaluations_come_before_the_next_seeds_trainings():
    """With one worker: seed 0's trainings and evaluations, then seed 1's; so that each seed's answer comes
    first, and a worker that the first seed has nothing left for trains the next seed instead of idling."""
    protocol = load_protocol()
    calls = []
    failures = protocol.train_then_evaluate(
        [("a", 0), ("b", 0), ("a", 1)], lambda job: calls.append(job) or Path(f"{job[0]}-seed{job[1]}"),
        lambda run_dir: [[(run_dir, "final", "auto")]], lambda chain: calls.append(chain[0][0].name), workers=1,
        checkpoints=["final"], label=str, group=lambda job: job[1])
    assert failures == []
    assert calls == [("a", 0), "a-seed0", ("b", 0), "b-seed0", ("a", 1), "a-seed1"]
