"""The `generalist` command as a user runs it: a subprocess, its exit code, stdout and stderr.

Every bad input ends with a non-zero exit, ONE stderr line that starts with "error:" and says how to fix it,
no traceback, and the files already in the run folder unchanged. About 55 s on 2 cores (each command
imports torch, about 2 s; one tiny training run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from generalist.recipes import recipe_names

TINY = ["data.train_subset=256", "data.val_size=100", "data.batch_size=64", "eval.n_examples=50",
        "eval.pgd_steps=2", "schedule.epochs=2", "runtime.threads_per_learner=1"]
MNIST = ["--recipe", "natural-small", "data.dataset=mnist", *TINY]


def cli(*args: str | Path, data_root: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONWARN")}
    if data_root is not None:
        env["GENERALIST_DATA"] = str(data_root)
    return subprocess.run([sys.executable, "-m", "generalist.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(result: subprocess.CompletedProcess, *fix: str) -> str:
    """Non-zero exit, stderr exactly one line "error: ..." holding every string of `fix`, no traceback."""
    assert result.returncode != 0, f"exit 0 for a bad input; stdout: {result.stdout[-500:]}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip("\n").split("\n")
    assert len(lines) == 1, f"stderr has {len(lines)} lines:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for text in fix:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root) -> Path:
    """A tiny run trained through the CLI; tests copy it before changing it."""
    run = tmp_path_factory.mktemp("cli") / "run"
    process = subprocess.Popen([sys.executable, "-m", "generalist.cli", "train", *MNIST, "--backend", "local",
                                "--data-root", str(data_root), "--run-dir", str(run)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Watch the folder while it trains: config.json must be there before the first round is logged.
    rounds = run / "metrics" / "rounds.jsonl"
    config_before_training = None
    deadline = time.monotonic() + 180
    while process.poll() is None and time.monotonic() < deadline:
        if config_before_training is None and rounds.exists():
            config_before_training = (run / "config.json").is_file()
        time.sleep(0.01)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert config_before_training, "config.json was not written before the first training round"
    return run


@pytest.fixture
def holding_dir(tmp_path) -> Path:
    """A run folder a user already put a file in."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine\n")
    return run


BAD_CONFIGS = {
    "unknown-recipe": (["--recipe", "generalist-dd"], ["unknown recipe", "generalist-d"]),
    "unknown-key": (["--recipe", "generalist-d-small", "mixing.sync_evry=2"], ["'mixing.sync_every'"]),
    "eps-zero": (["--recipe", "generalist-d-small", "learners.linf.attack.eps=0"], ["eps must be > 0", "8/255"]),
    "eps-negative": (["--recipe", "generalist-d-small", "learners.linf.attack.eps=-8/255"], ["eps must be > 0"]),
    "lr-zero": (["--recipe", "generalist-d-small", "learners.linf.lr=0"], ["learners.linf.lr must be > 0"]),
    "lr-negative": (["--recipe", "pgd-at-small", "learners.linf.lr=-0.1"], ["learners.linf.lr must be > 0"]),
    "weights-not-summing-to-1": (["--recipe", "generalist-d-small", "learners.linf.final_weight=0.5"],
                                 ["must sum to 1", "linf=0.5", "natural=0.6"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_bad_config_is_one_error_line_that_names_the_fix(holding_dir, case):
    args, fix = BAD_CONFIGS[case]
    before = snapshot(holding_dir)

    result = cli("train", *args, "--backend", "local", "--run-dir", holding_dir)

    assert_one_line_error(result, *fix)
    assert snapshot(holding_dir) == before


def test_a_missing_dataset_folder_is_one_error_line_that_names_the_fix(holding_dir, tmp_path):
    empty = tmp_path / "no-data-here"
    empty.mkdir()
    before = snapshot(holding_dir)

    result = cli("train", *MNIST, "--backend", "local", "--data-root", empty, "--run-dir", holding_dir)

    assert_one_line_error(result, "MNIST not found", str(empty), "--data-root")
    # Nothing written: after the data is fixed, the same command must not find "a run" there already.
    assert snapshot(holding_dir) == before


def test_a_corrupt_dataset_file_is_one_error_line_that_names_the_file(holding_dir, tmp_path, data_root):
    copy = tmp_path / "data"
    shutil.copytree(data_root / "MNIST", copy / "MNIST")
    damaged = copy / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    damaged.chmod(0o644)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    before = snapshot(holding_dir)

    result = cli("train", *MNIST, "--backend", "local", "--data-root", copy, "--run-dir", holding_dir)

    assert_one_line_error(result, str(damaged), "corrupt", "copy or download it again")
    assert all(snapshot(holding_dir)[name] == data for name, data in before.items())


def test_a_run_folder_that_holds_a_run_is_refused_and_left_untouched(finished_run, data_root):
    before = snapshot(finished_run)

    result = cli("train", *MNIST, "--backend", "local", "--data-root", data_root, "--run-dir", finished_run)

    assert_one_line_error(result, "already holds a run", "--resume")
    assert snapshot(finished_run) == before


def test_resuming_from_a_corrupt_checkpoint_is_refused_and_left_untouched(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    target = run / "checkpoints" / "last" / "global.pt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    before = snapshot(run)

    result = cli("train", "--resume", "--run-dir", run)

    assert_one_line_error(result, str(target), "corrupt")
    after = snapshot(run)
    assert all(after[name] == data for name, data in before.items()), "a file of the run was changed"


def test_a_run_folder_that_is_a_file_is_one_error_line_and_the_file_is_untouched(tmp_path, data_root):
    path = tmp_path / "results.txt"
    path.write_text("mine\n")

    fresh = cli("train", *MNIST, "--backend", "local", "--data-root", data_root, "--run-dir", path)
    resumed = cli("train", "--resume", "--run-dir", path)

    for result in (fresh, resumed):
        assert_one_line_error(result, f"--run-dir {path} is a file", "choose a folder path")
    assert path.read_text() == "mine\n"


def test_resume_from_a_step_the_run_does_not_hold_is_one_line_naming_the_steps_it_holds(finished_run):
    before = snapshot(finished_run)

    result = cli("train", "--run-dir", finished_run, "--resume-from", "999")

    assert_one_line_error(result, "--resume-from 999", "no checkpoint of step 999", "it holds steps 8")
    assert snapshot(finished_run) == before


def test_restart_if_no_checkpoint_without_resume_is_one_error_line(tmp_path):
    result = cli("train", *MNIST, "--run-dir", tmp_path / "run", "--restart-if-no-checkpoint")

    assert_one_line_error(result, "--restart-if-no-checkpoint goes with --resume")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [["train", *MNIST, "--run-dir", "unused"], ["eval", "unused"]],
                         ids=["train", "eval"])
def test_an_unexpected_exception_is_one_line_naming_it_and_debug_shows_the_traceback(monkeypatch, capsys, command):
    from generalist import cli as cli_module, eval_cli

    def broken(args):
        raise RuntimeError("something nobody foresaw\non two lines")

    monkeypatch.setattr(cli_module, "_train", broken)
    monkeypatch.setattr(eval_cli, "run_eval", broken)

    code = cli_module.main(command)
    err = capsys.readouterr().err
    assert code == 1
    assert err == ("error: unexpected RuntimeError: something nobody foresaw on two lines; run again with --debug "
                   "for the traceback\n")

    with pytest.raises(RuntimeError, match="nobody foresaw"):  # --debug lets it reach Python, traceback and all
        cli_module.main([command[0], "--debug", *command[1:]])


def test_debug_before_the_command_also_shows_the_traceback_of_a_user_error(capsys):
    from generalist import cli as cli_module

    code = cli_module.main(["--debug", "config", "--recipe", "generalist-dd"])

    err = capsys.readouterr().err
    assert code != 0 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: unknown recipe")


def test_a_tiny_training_run_writes_its_config_first_and_its_summary_last(finished_run, data_root):
    shown = cli("config", *MNIST, "runtime.backend=local", f'data.root="{data_root.resolve()}"')
    assert shown.returncode == 0, shown.stderr
    assert json.loads((finished_run / "config.json").read_text()) == json.loads(shown.stdout)
    summary = json.loads((finished_run / "final" / "summary.json").read_text())
    assert summary["recipe"] == "natural-small" and summary["backend"] == "local"
    assert "global" in summary["final_validation"]
    assert (finished_run / "final" / "global.pt").stat().st_mtime_ns >= \
        (finished_run / "config.json").stat().st_mtime_ns


def test_recipes_lists_every_recipe_through_the_console_script():
    script = Path(sys.executable).parent / "generalist"
    result = subprocess.run([str(script), "recipes"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert listed == recipe_names()


def test_config_prints_the_resolved_recipe_as_json_with_the_override_applied():
    result = cli("config", "--recipe", "generalist-d", "learners.linf.attack.eps=4/255")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    linf = next(learner for learner in config["learners"] if learner["name"] == "linf")
    assert linf["attack"]["eps"] == 4 / 255
    assert config["recipe"] == "generalist-d" and config["model"]["name"] == "resnet18"
