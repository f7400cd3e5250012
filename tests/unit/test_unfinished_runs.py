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


FAKE_GENERALIST = """import json, os, sys, time
# A stand-in for `generalist train --run-dir RUN` (a checkpoint every 0.2 s) and `generalist eval RUN` (waits).
if sys.argv[1] == "train":
    last = os.path.join(sys.argv[sys.argv.index("--run-dir") + 1], "checkpoints", "last")
    os.makedirs(last, exist_ok=True)
    step = 0
    while True:
        step += 10
        with open(os.path.join(last, ".state.tmp"), "w") as f:
            json.dump({"global_step": step}, f)
        os.replace(os.path.join(last, ".state.tmp"), os.path.join(last, "state.json"))
        time.sleep(0.2)
time.sleep(600)
"""


def test_stop_ends_drivers_and_evaluations_at_once_and_each_training_right_after_a_checkpoint(tmp_path):
    import subprocess
    import sys
    import time

    unfinished = load_unfinished()
    runs, elsewhere = tmp_path / "runs", tmp_path / "other-runs"
    bin_dir, accuracy = tmp_path / "bin", tmp_path / "benchmarks" / "accuracy"
    for folder in (runs / "a-seed0", runs / "b-seed0", elsewhere / "c-seed0", bin_dir, accuracy):
        folder.mkdir(parents=True)
    (bin_dir / "generalist").write_text(FAKE_GENERALIST)
    (accuracy / "protocol.py").write_text("import time; time.sleep(600)\n")
    fake = [sys.executable, str(bin_dir / "generalist")]
    processes = {"training": subprocess.Popen([*fake, "train", "--run-dir", str(runs / "a-seed0")]),
                 "evaluation": subprocess.Popen([*fake, "eval", str(runs / "b-seed0"), "--n", "1000"]),
                 "driver": subprocess.Popen([sys.executable, str(accuracy / "protocol.py"), "--runs", str(runs)]),
                 "another study's driver": subprocess.Popen([sys.executable, str(accuracy / "protocol.py"),
                                                            "--scale", "cpu"]),  # its runs: runs/accuracy-cpu
                 "another study's training": subprocess.Popen([*fake, "train", "--run-dir",
                                                               str(elsewhere / "c-seed0")])}
    try:
        deadline = time.monotonic() + 60
        while unfinished.checkpoint_step(runs / "a-seed0") is None:
            assert time.monotonic() < deadline, "the fake training never wrote a checkpoint"
            time.sleep(0.05)
        found = unfinished.study_processes(runs)
        assert {role: sorted(pid for pid, _ in pids) for role, pids in found.items()} == {
            "driver": [processes["driver"].pid], "train": [processes["training"].pid],
            "eval": [processes["evaluation"].pid]}

        unfinished.stop(runs, wait_s=60, poll_s=0.02)

        for name in ("training", "evaluation", "driver"):
            assert processes[name].wait(timeout=30) == -9, name
        step = unfinished.checkpoint_step(runs / "a-seed0")
        time.sleep(0.5)
        assert unfinished.checkpoint_step(runs / "a-seed0") == step  # nothing wrote after the stop
        for name in ("another study's training", "another study's driver"):
            assert processes[name].poll() is None, f"{name} was stopped"
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
