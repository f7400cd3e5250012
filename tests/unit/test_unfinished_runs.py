"""The study's unfinished runs travel through the repository (benchmarks/accuracy/unfinished.py): what `save`
packs, `restore` gives back byte for byte on another checkout, a run folder already there is never overwritten,
and a run whose evaluations are all published leaves no archive behind."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_script

UNFINISHED = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy" / "unfinished.py"


def load_unfinished():
    return load_script(UNFINISHED, "study_unfinished")


def training_run(runs: Path, name: str) -> Path:
    """A run folder halfway through training: a checkpoint, metrics, a half-written next checkpoint, a log."""
    run_dir = runs / name
    (run_dir / "checkpoints" / "last").mkdir(parents=True)
    (run_dir / "checkpoints" / "last" / "global.pt").write_bytes(bytes(range(256)) * 8)
    (run_dir / "checkpoints" / "last" / "state.json").write_text(json.dumps({"global_step": 375}))
    (run_dir / "checkpoints" / ".last.tmp-x1").mkdir()
    (run_dir / "checkpoints" / ".last.tmp-x1" / "global.pt").write_bytes(b"half")
    (run_dir / "metrics").mkdir()
    (run_dir / "metrics" / "rounds.jsonl").write_text('{"step": 1}\n')
    (run_dir / "config.json").write_text(json.dumps({"mixing": {"global_bn": "reestimate"}}))
    (runs / "logs").mkdir(exist_ok=True)
    (runs / "logs" / f"{name}.log").write_text("epoch 1/30\n")
    return run_dir


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_saved_run_is_restored_byte_for_byte_on_another_checkout(tmp_path):
    unfinished = load_unfinished()
    runs, archives = tmp_path / "here" / "runs", tmp_path / "repo" / "unfinished"
    training_run(runs, "avg-seed0")

    (archive,) = unfinished.save(runs, tmp_path / "results", archives)
    elsewhere = tmp_path / "elsewhere" / "runs"
    assert unfinished.restore(elsewhere, archives) == [elsewhere / "avg-seed0"]

    expected = {k: v for k, v in files_of(runs).items() if ".last.tmp" not in k}  # a checkpoint half written
    assert files_of(elsewhere) == expected
    assert "logs/avg-seed0.log" in expected
    assert archive.stat().st_mode & 0o044 == 0o044  # readable by whoever checks the repository out


def test_restore_never_overwrites_a_run_folder_that_is_here(tmp_path):
    unfinished = load_unfinished()
    runs, archives = tmp_path / "runs", tmp_path / "unfinished"
    run_dir = training_run(runs, "avg-seed0")
    unfinished.save(runs, tmp_path / "results", archives)
    (run_dir / "checkpoints" / "last" / "state.json").write_text(json.dumps({"global_step": 750}))  # further on

    assert unfinished.restore(runs, archives) == []
    assert json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())["global_step"] == 750


def test_a_run_whose_evaluations_are_all_published_leaves_no_archive(tmp_path):
    unfinished = load_unfinished()
    runs, results, archives = tmp_path / "runs", tmp_path / "results", tmp_path / "unfinished"
    run_dir = training_run(runs, "avg-seed0")
    (run_dir / "final").mkdir()
    (run_dir / "final" / "summary.json").write_text("{}")
    published = results / "runs" / "avg-seed0"
    published.mkdir(parents=True)
    for tag in ("aa-standard-Linf", "best-aa-standard-Linf", "last-savedbn-aa-standard-Linf"):
        (published / f"eval-{tag}.json").write_text("{}")

    (archive,) = unfinished.save(runs, results, archives)  # best with its stored statistics is not published yet
    (published / "eval-best-savedbn-aa-standard-Linf.json").write_text("{}")
    assert unfinished.save(runs, results, archives) == []
    assert not archive.exists()
