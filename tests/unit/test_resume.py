"""Stopping and resuming a run: exact resume, refused checkpoints, divergence and crashes mid-swap.

Local backend on CPU, deterministic, with a config of 7 steps an epoch (the last batch short), a sync every
2 steps (4 rounds an epoch: 2, 2, 2, 1 steps) and 3 epochs; epochs 2 and 3 are communication epochs and the
mixing weights move in epoch 3. About 25 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from generalist.checkpoint import load_payload, load_state_dict_file, read_state
from generalist.distributed import train
from generalist.errors import CheckpointError, DataError, RunFolderError, TrainingDiverged
from generalist.run_folder import Resume
from generalist.training import RunStopped

SMALL = ["data.train_subset=200", "data.batch_size=32", "mixing.sync_every=2", "runtime.checkpoint_every_rounds=1"]
ROUNDS_PER_EPOCH = 4  # steps (0, 1), (2, 3), (4, 5), (6)
STEPS_PER_EPOCH = 7
LEARNERS = ("linf", "natural")


def small_config(*overrides: str):
    return tiny_config("generalist-d-small", *SMALL, *overrides)


def step_after_round(k: int) -> int:
    """Optimiser steps done after k rounds of the plan above."""
    epochs, rest = divmod(k, ROUNDS_PER_EPOCH)
    return epochs * STEPS_PER_EPOCH + 2 * rest


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same(a, b, where: str = "") -> None:
    """Nested payloads equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def read_rows(run: Path, table: str) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics" / f"{table}.jsonl").read_text().splitlines()]


def numbers(row: dict) -> dict:
    """A metrics row without its wall-clock fields."""
    return {k: v for k, v in row.items() if k not in ("seconds", "sync_seconds")}


def stop_after(config, run: Path, rounds: int) -> None:
    with pytest.raises(RunStopped):
        train(config, run, max_rounds=rounds, quiet=True)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted run every resumed run must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(small_config(), run, quiet=True)
    return run


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A run stopped after 2 rounds, with a checkpoint after round 2 on disk (copy it before changing it)."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    stop_after(small_config(), run, 2)
    return run


@pytest.fixture
def stopped_copy(stopped_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    return run


def assert_matches_reference(run: Path, reference: Path) -> None:
    expected = load_state_dict_file(reference / "final" / "global.pt")
    got = load_state_dict_file(run / "final" / "global.pt")
    assert_same(got, expected, "final/global.pt")
    for name in ["global"] + [f"learner-{n}" for n in LEARNERS]:
        assert_same(load_payload(run / "checkpoints" / "last", name),
                    load_payload(reference / "checkpoints" / "last", name), f"checkpoints/last/{name}")
    assert_same(load_payload(run / "checkpoints" / "best", "global"),
                load_payload(reference / "checkpoints" / "best", "global"), "checkpoints/best/global")
    rows = read_rows(run, "rounds")
    keys = [(r["learner"], r["global_step"]) for r in rows]
    assert len(keys) == len(set(keys)), "a round was logged twice after resume"
    assert [numbers(r) for r in rows] == [numbers(r) for r in read_rows(reference, "rounds")]
    assert read_rows(run, "epochs") == read_rows(reference, "epochs")


@pytest.mark.parametrize("rounds", [1, 4, 6, 11], ids=["mid-epoch-1", "end-of-epoch-1",
                                                         "inside-communication-epoch-2", "inside-mixing-epoch-3"])
def test_a_stopped_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(reference_run, tmp_path, rounds):
    run = tmp_path / "run"
    stop_after(small_config(), run, rounds)
    # The checkpoint on disk is the one after the last completed round; a round that ends an epoch is not
    # checkpointed until the epoch's evaluation is done, so a stop there leaves the round before it.
    ends_epoch = rounds % ROUNDS_PER_EPOCH == 0
    expected_step = step_after_round(rounds - 1 if ends_epoch else rounds)
    assert read_state(run / "checkpoints" / "last")["global_step"] == expected_step
    assert max(r["global_step"] for r in read_rows(run, "rounds")) == step_after_round(rounds)

    train(small_config(), run, resume=True, quiet=True)

    assert_matches_reference(run, reference_run)


def test_resuming_a_run_stopped_before_its_first_checkpoint_stops_unless_asked_to_train_again(reference_run, tmp_path):
    run = tmp_path / "run"
    stop_after(small_config("runtime.checkpoint_every_rounds=0"), run, 2)
    assert not (run / "checkpoints").exists()
    before = snapshot(run)

    with pytest.raises(RunFolderError, match="no checkpoint yet.*--restart-if-no-checkpoint"):
        train(small_config(), run, resume=True, quiet=True)
    assert snapshot(run) == before

    train(small_config(), run, resume=Resume(restart_if_no_checkpoint=True), quiet=True)
    assert_matches_reference(run, reference_run)


def test_a_folder_that_holds_no_checkpoint_yet_starts_a_new_run_without_resume(reference_run, tmp_path):
    run = tmp_path / "run"
    stop_after(small_config("runtime.checkpoint_every_rounds=0", "seed=7"), run, 2)

    train(small_config(), run, quiet=True)

    assert_matches_reference(run, reference_run)
    assert json.loads((run / "config.json").read_text())["seed"] == 0


def test_a_run_that_failed_on_its_dataset_wrote_nothing_and_the_same_command_then_starts(reference_run, tmp_path):
    run, empty = tmp_path / "run", tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="not found"):
        train(small_config(f'data.root="{empty}"'), run, quiet=True)
    assert not run.exists(), "the run folder was made before the data was known good"

    train(small_config(), run, quiet=True)

    assert_matches_reference(run, reference_run)


@pytest.fixture
def two_checkpoints(tmp_path) -> Path:
    """A run whose folder holds a Ray session's checkpoint of step 4 and checkpoints/last of step 6, both whole.

    The step-4 copy stands for an earlier Ray session (same files, Ray Train's folder name); resuming from
    either must still end bit-identical to the uninterrupted run."""
    run = tmp_path / "run"
    stop_after(small_config(), run, 2)
    assert read_state(run / "checkpoints" / "last")["global_step"] == 4
    shutil.copytree(run / "checkpoints" / "last", run / "ray-session-1" / "step-0000000004")
    with pytest.raises(RunStopped):
        train(small_config(), run, resume=True, max_rounds=1, quiet=True)
    assert read_state(run / "checkpoints" / "last")["global_step"] == 6
    return run


@pytest.mark.parametrize("damage", ["truncated-learner-file", "state-json-deleted"])
def test_a_broken_newest_checkpoint_is_named_and_the_one_before_it_is_resumed(reference_run, two_checkpoints,
                                                                             capsys, damage):
    last = two_checkpoints / "checkpoints" / "last"
    if damage == "truncated-learner-file":
        path = last / "learner-natural.pt"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        (last / "state.json").unlink()
    capsys.readouterr()

    train(small_config(), two_checkpoints, resume=True, quiet=True)

    out, err = capsys.readouterr()
    broken = "learner-natural.pt" if damage == "truncated-learner-file" else "state.json"
    assert f"skipped a checkpoint: {last / broken}" in err, err
    assert f"resuming from {two_checkpoints / 'ray-session-1' / 'step-0000000004'} (step 4)" in out, out
    assert_matches_reference(two_checkpoints, reference_run)


def test_with_every_checkpoint_broken_resume_names_them_and_stops_unless_asked_to_train_again(reference_run,
                                                                                            two_checkpoints):
    (two_checkpoints / "checkpoints" / "last" / "state.json").unlink()
    (two_checkpoints / "ray-session-1" / "step-0000000004" / "state.json").unlink()
    before = snapshot(two_checkpoints)

    with pytest.raises(CheckpointError, match="no usable checkpoint") as refused:
        train(small_config(), two_checkpoints, resume=True, quiet=True)
    assert str(refused.value).count("state.json is missing") == 2 and "--restart-if-no-checkpoint" in str(refused.value)
    assert snapshot(two_checkpoints) == before, "a refused resume changed the run folder"

    train(small_config(), two_checkpoints, resume=Resume(restart_if_no_checkpoint=True), quiet=True)
    assert_matches_reference(two_checkpoints, reference_run)


@pytest.mark.parametrize("source", ["step", "folder", "folder-relative-to-the-run"])
def test_resume_from_a_step_or_a_folder_continues_from_exactly_that_checkpoint(reference_run, two_checkpoints,
                                                                               capsys, source):
    chosen = two_checkpoints / "ray-session-1" / "step-0000000004"
    given = {"step": "4", "folder": str(chosen), "folder-relative-to-the-run": "ray-session-1/step-0000000004"}[source]
    capsys.readouterr()

    train(small_config(), two_checkpoints, resume=Resume(source=given), quiet=True)

    assert f"resuming from {chosen} (step 4)" in capsys.readouterr().out
    assert_matches_reference(two_checkpoints, reference_run)


def test_resume_from_a_step_no_checkpoint_holds_names_the_steps_there_are(two_checkpoints):
    before = snapshot(two_checkpoints)

    with pytest.raises(CheckpointError, match="no checkpoint of step 5; it holds steps 4, 6"):
        train(small_config(), two_checkpoints, resume=Resume(source="5"), quiet=True)

    assert snapshot(two_checkpoints) == before


def test_resume_from_a_broken_checkpoint_is_refused_rather_than_replaced_by_another(two_checkpoints):
    path = two_checkpoints / "ray-session-1" / "step-0000000004" / "global.pt"
    path.write_bytes(path.read_bytes()[:100])

    with pytest.raises(CheckpointError, match=f"--resume-from 4: {path} is corrupt or truncated"):
        train(small_config(), two_checkpoints, resume=Resume(source="4"), quiet=True)


def test_a_crash_in_the_middle_of_a_checkpoint_swap_still_resumes(reference_run, tmp_path):
    run = tmp_path / "run"
    stop_after(small_config(), run, 10)
    last = run / "checkpoints" / "last"
    # What replace_folder leaves when killed between its two renames: only the previous copy, `.last.old`.
    os.replace(last, last.parent / ".last.old")

    train(small_config(), run, resume=True, quiet=True)

    assert_matches_reference(run, reference_run)
    assert not (last.parent / ".last.old").exists()


@pytest.mark.parametrize("damage", ["flipped-bytes-in-global", "truncated-learner-file"])
def test_a_corrupt_checkpoint_is_refused_and_left_as_it_was(stopped_copy, damage):
    last = stopped_copy / "checkpoints" / "last"
    if damage == "flipped-bytes-in-global":
        data = bytearray((last / "global.pt").read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 8):
            data[i] ^= 0xFF
        (last / "global.pt").write_bytes(bytes(data))
        broken = "global.pt"
    else:
        path = last / "learner-natural.pt"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        broken = "learner-natural.pt"
    before = snapshot(stopped_copy / "checkpoints")

    with pytest.raises(CheckpointError, match=broken):
        train(small_config(), stopped_copy, resume=True, quiet=True)

    assert snapshot(stopped_copy / "checkpoints") == before


def test_resuming_with_a_different_config_is_refused_naming_the_field(stopped_copy):
    before = snapshot(stopped_copy)

    with pytest.raises(CheckpointError, match=r"mixing\.sync_every"):
        train(small_config("mixing.sync_every=1"), stopped_copy, resume=True, quiet=True)

    assert snapshot(stopped_copy) == before


def test_a_folder_that_holds_a_run_is_refused_without_resume_and_left_untouched(stopped_copy):
    before = snapshot(stopped_copy)

    with pytest.raises(RunFolderError, match="--resume"):
        train(small_config(), stopped_copy, quiet=True)

    assert snapshot(stopped_copy) == before


def test_a_diverging_run_stops_with_the_last_good_checkpoint_kept(tmp_path):
    run = tmp_path / "run"
    config = small_config("learners.linf.lr=1e6", "learners.natural.lr=1e6")

    with pytest.raises(TrainingDiverged, match="lr"):
        train(config, run, quiet=True)

    last = run / "checkpoints" / "last"
    state = read_state(last)
    assert state["global_step"] >= 2, "no good round was checkpointed, so the test checks nothing"
    for name in ["global"] + [f"learner-{n}" for n in LEARNERS]:
        payload = load_payload(last, name)
        tensors = payload["state"] if name == "global" else {**payload["model"], **payload["ema"]}
        bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        assert not bad, f"checkpoints/last/{name} holds non-finite tensors: {bad[:3]}"


def test_a_run_on_the_step_clock_with_reestimated_statistics_resumes_bit_identical(tmp_path):
    """Rounds cut at clock epochs inside data epochs, the rescaled EMA, learners that keep their own BatchNorm
    statistics at redistribution, and a re-estimated final/global.pt: a stop and resume changes no bit."""
    step_clock = ["schedule.clock_epochs=10", "mixing.global_bn=reestimate", "mixing.bn_batches=2"]
    reference = tmp_path / "reference"
    train(small_config(*step_clock), reference, quiet=True)
    run = tmp_path / "run"
    stop_after(small_config(*step_clock), run, 7)
    train(small_config(*step_clock), run, resume=True, quiet=True)
    assert_matches_reference(run, reference)
    # final/global.pt holds re-estimated statistics, not the stored global EMA's.
    stored = load_payload(reference / "checkpoints" / "last", "global")["state"]
    shipped = load_state_dict_file(reference / "final" / "global.pt")
    assert any(not torch.equal(stored[k], shipped[k]) for k in stored if k.endswith("running_var"))


def test_the_final_table_of_a_resumed_run_keeps_the_runs_threat_order():
    """After a resume the last epoch's row is read back from the metrics store, whose columns come in its own order
    (a multi-norm run printed L2 before Linf, against every epoch table above it); the final table orders them as
    the run's validation does: clean, then each threat in the run's order."""
    from generalist.records import accuracy_fields
    from generalist.run_folder import format_table

    stored = {"model": "global", "epoch": 30, "pgd_acc_L2": 0.3915, "clean_acc": 0.4785, "pgd_acc_Linf": 0.254}
    fields = accuracy_fields(stored, ["Linf", "L2"])
    assert list(fields) == ["clean_acc", "pgd_acc_Linf", "pgd_acc_L2"]
    assert format_table({"global": fields}).splitlines()[0] == "| model | clean_acc | pgd_acc_Linf | pgd_acc_L2 |"
    assert list(accuracy_fields(stored)) == ["clean_acc", "pgd_acc_L2", "pgd_acc_Linf"]  # no order given: the row's
