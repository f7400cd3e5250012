"""The study's protocol (benchmarks/accuracy/protocol.py) resumes what was interrupted: a run folder with a
config continues with --resume, and one that never reached its first checkpoint starts over instead of failing
(seed 2 of the converged study once stopped there: `--resume` alone refuses a folder without a checkpoint)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PROTOCOL = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy" / "protocol.py"


def load_protocol():
    sys.path.insert(0, str(PROTOCOL.parent))  # protocol imports its neighbour `tables`
    spec = importlib.util.spec_from_file_location("study_protocol", PROTOCOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
