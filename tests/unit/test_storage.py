"""Run folders at a URI: resolving locations, writes that a crash cannot tear, and whole runs through pyarrow.

A `file://` URI takes the code path of a remote store (pyarrow calls, no renames, no appends) on the local
disk. `DiskObjectStore` below is a pyarrow filesystem on the local disk that, like S3 or GCS, cannot rename
or append (it raises), records every write, and can die at the Nth one, to test what a crash leaves.
Real S3/GCS are not reachable from the test machines and are not tested. About 20 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from conftest import tiny_config
from generalist.checkpoint import find_checkpoint, load_payload, load_state_dict_file, read_state, write_checkpoint
from generalist.distributed import train
from generalist.errors import RunFolderError
from generalist.metrics import MetricsLog
from generalist.storage import Location, locate
from generalist.training import RunStopped

SMALL = ["data.train_subset=200", "data.batch_size=32", "mixing.sync_every=2", "runtime.checkpoint_every_rounds=1"]
LEARNERS = ("linf", "natural")


class Crash(BaseException):
    """The process died here (a BaseException, so no `except Exception` in the code under test can catch it)."""


class DiskObjectStore(pafs.FileSystemHandler):
    """An object store on the local disk: whole-object writes, server-side copies, no rename, no append."""

    def __init__(self, root: Path):
        self.disk = pafs.SubTreeFileSystem(str(root), pafs.LocalFileSystem())
        self.journal: list[tuple[str, str]] = []  # (what, path) of every change, in order
        self.crash_at: int | None = None  # die instead of making change number `crash_at` (0-based)

    def _change(self, what: str, path: str) -> None:
        if self.crash_at is not None and len(self.journal) == self.crash_at:
            raise Crash(f"{what} {path}")
        self.journal.append((what, path))

    def get_type_name(self):
        return "disk-object-store"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.disk.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.disk.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.disk.create_dir(path, recursive=recursive)  # object stores have no folders; not a change

    def delete_dir(self, path):
        self._change("delete", path)
        self.disk.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._change("delete", path)
        self.disk.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise AssertionError("a run folder never empties its store")

    def delete_file(self, path):
        self._change("delete", path)
        self.disk.delete_file(path)

    def move(self, src, dest):
        raise AssertionError(f"an object store cannot rename ({src} -> {dest})")

    def copy_file(self, src, dest):
        self._change("copy", dest)
        self.disk.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.disk.open_input_stream(path)

    def open_input_file(self, path):
        return self.disk.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self._change("write", path)
        return self.disk.open_output_stream(path)

    def open_append_stream(self, path, metadata):
        raise AssertionError(f"an object store cannot append ({path})")


def small_config(*overrides: str):
    return tiny_config("generalist-d-small", *SMALL, *overrides)


def numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("seconds", "sync_seconds")}


def rows(run: Path, table: str) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics" / f"{table}.jsonl").read_text().splitlines()]


def assert_same_tensors(a: dict, b: dict, where: str) -> None:
    assert set(a) == set(b), where
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{where}: {differ[:5]} differ"


def assert_same_run(run: Path, reference: Path) -> None:
    """Same final model, same last checkpoint, same metric rows (wall-clock fields aside)."""
    assert_same_tensors(load_state_dict_file(run / "final" / "global.pt"),
                        load_state_dict_file(reference / "final" / "global.pt"), "final/global.pt")
    for name in LEARNERS:
        got, expected = (load_payload(r / "checkpoints" / "last", f"learner-{name}") for r in (run, reference))
        assert_same_tensors(got["model"], expected["model"], f"learner-{name}")
    assert_same_tensors(load_payload(run / "checkpoints" / "best", "global")["state"],
                        load_payload(reference / "checkpoints" / "best", "global")["state"], "checkpoints/best")
    assert [numbers(r) for r in rows(run, "rounds")] == [numbers(r) for r in rows(reference, "rounds")]
    assert rows(run, "epochs") == rows(reference, "epochs")
    assert pq.read_table(run / "metrics" / "epochs.parquet").to_pylist() == rows(reference, "epochs")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted run in a plain local folder."""
    run = tmp_path_factory.mktemp("plain") / "run"
    train(small_config(), run, quiet=True)
    return run


# --- locations --------------------------------------------------------------------------------------------


def test_a_plain_path_stays_the_local_disk_and_a_file_uri_goes_through_pyarrow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain = locate("runs/x")
    assert plain.native and isinstance(plain.fs, pafs.LocalFileSystem)
    assert plain.path == os.path.join(os.getcwd(), "runs", "x") and str(plain / "config.json") == "runs/x/config.json"

    uri = locate(f"file://{tmp_path}/runs/x")
    assert not uri.native and isinstance(uri.fs, pafs.LocalFileSystem)
    assert uri.path == f"{tmp_path}/runs/x" and str(uri / "final") == f"file://{tmp_path}/runs/x/final"


@pytest.mark.parametrize("where", ["foo://bucket/runs/x", "file://relative/runs/x"])
def test_a_uri_pyarrow_cannot_open_is_a_run_folder_error_naming_what_works(tiny, where):
    with pytest.raises(RunFolderError, match=r"s3://bucket/runs/x.*file:///absolute/path") as error:
        train(tiny(), where, quiet=True)
    assert where in str(error.value)


def test_the_cli_reports_a_uri_with_an_unknown_scheme_on_one_line(data_root):
    result = subprocess.run([sys.executable, "-m", "generalist.cli", "train", "--recipe", "natural-small",
                             "--backend", "local", "--data-root", str(data_root), "--run-dir", "nosuch://b/run"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nosuch://" in lines[0], result.stderr


# --- writes -------------------------------------------------------------------------------------------------


def test_a_local_write_that_cannot_finish_leaves_the_target_and_no_temporary_file(tmp_path):
    (tmp_path / "state.json").mkdir()  # os.replace onto a folder fails after the data was written
    (tmp_path / "state.json" / "keep").write_text("x")
    with pytest.raises(OSError):
        locate(tmp_path / "state.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert (tmp_path / "state.json" / "keep").read_text() == "x"


@pytest.fixture
def umask():
    """Set the process umask for one test, and put the old one back."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_run_files_and_checkpoint_folders_get_the_modes_the_users_umask_gives(tmp_path, umask, mask):
    umask(mask)
    run = tmp_path / "run"
    locate(run / "config.json").write_text("{}")
    write_checkpoint(run / "checkpoints" / "last", payloads(1), state(1))
    metrics = MetricsLog(run)
    metrics.append("rounds", [{"global_step": 1, "loss": 0.5}])
    metrics.flush()

    # What `open()` and `mkdir` give under this umask, as any other tool's output would have.
    modes = {str(p.relative_to(run)): p.stat().st_mode & 0o777 for p in run.rglob("*")}
    assert {name: oct(m) for name, m in modes.items() if m != (0o777 if (run / name).is_dir() else 0o666) & ~mask} \
        == {}, f"umask {oct(mask)}"
    assert "config.json" in modes and "checkpoints/last/state.json" in modes and "metrics/rounds.parquet" in modes


def payloads(step: int) -> dict[str, dict]:
    return {"global": {"state": {"w": torch.full((3,), float(step))}, "ema_steps": step},
            "learner-linf": {"model": {"w": torch.full((2,), -float(step))}, "steps_done": step}}


def state(step: int) -> dict:
    return {"global_step": step, "position": step, "learners": ["linf"]}


def assert_checkpoint_is(folder, step: int) -> None:
    assert read_state(folder)["global_step"] == step
    for name, payload in payloads(step).items():
        loaded = load_payload(folder, name)
        assert loaded.keys() == payload.keys() and str(loaded) == str(payload), name


@pytest.mark.parametrize("where", ["plain-path", "uri"])
def test_a_checkpoint_write_that_fails_midway_keeps_the_previous_checkpoint(tmp_path, where):
    folder = tmp_path / "last" if where == "plain-path" else locate(f"file://{tmp_path}/last")
    write_checkpoint(folder, payloads(1), state(1))
    broken = {**payloads(2), "learner-natural": {"model": {"w": torch.zeros(2)}, "hook": lambda: None}}

    with pytest.raises(Exception, match="pickle|lambda"):  # torch.save cannot store a function
        write_checkpoint(folder, broken, state(2))

    assert_checkpoint_is(find_checkpoint(folder), 1)
    write_checkpoint(folder, payloads(3), state(3))
    assert_checkpoint_is(folder, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"], "a temporary folder was left behind"


def test_through_a_store_without_rename_state_json_is_written_last_and_any_crash_leaves_a_checkpoint(tmp_path):
    pristine, work = tmp_path / "pristine", tmp_path / "work"
    store = DiskObjectStore(pristine)
    folder = Location(pafs.PyFileSystem(store), "run/checkpoints/last")
    write_checkpoint(folder, payloads(1), state(1))
    store.journal.clear()
    write_checkpoint(folder, payloads(2), state(2))
    journal = list(store.journal)

    staged_state = journal.index(("write", "run/checkpoints/.last.new/state.json"))
    assert [op for op in journal if "/.last.new/" in op[1]][-1] == journal[staged_state], \
        "the staged copy was changed after its state.json"
    into_last = [op for op in journal if op[1].startswith("run/checkpoints/last")]
    assert into_last[0] == ("delete", "run/checkpoints/last/state.json"), "the old state.json must go first"
    assert into_last[-1] == ("copy", "run/checkpoints/last/state.json"), "the new state.json must come last"
    assert_checkpoint_is(folder, 2)

    seen = set()
    for crash_at in range(len(journal)):
        shutil.rmtree(work, ignore_errors=True)
        write_checkpoint(work / "run" / "checkpoints" / "last", payloads(1), state(1))
        store = DiskObjectStore(work)
        folder = Location(pafs.PyFileSystem(store), "run/checkpoints/last")
        store.crash_at = crash_at
        with pytest.raises(Crash):
            write_checkpoint(folder, payloads(2), state(2))

        expected = 2 if crash_at > staged_state else 1  # once the staged copy is whole, it is the newest
        assert_checkpoint_is(find_checkpoint(folder), expected)
        seen.add(expected)
        # The resumed run writes its next checkpoint; it may die at any change of that write as well.
        after_crash = tmp_path / "after-crash"
        shutil.rmtree(after_crash, ignore_errors=True)
        shutil.copytree(work, after_crash)
        for second_crash_at in range(10 * len(journal)):
            shutil.rmtree(work)
            shutil.copytree(after_crash, work)
            store.journal.clear()
            store.crash_at = second_crash_at
            try:
                write_checkpoint(folder, payloads(3), state(3))
            except Crash:
                found = find_checkpoint(folder)
                assert found is not None, f"no complete checkpoint after crashes at {crash_at}, {second_crash_at}"
                step = read_state(found)["global_step"]
                assert step >= expected, f"crashes at {crash_at}, {second_crash_at} lost the resumed checkpoint"
                assert_checkpoint_is(found, step)
                continue
            break
        store.crash_at = None
        assert_checkpoint_is(folder, 3)
        assert find_checkpoint(folder) == folder
    assert seen == {1, 2}


# --- metrics ------------------------------------------------------------------------------------------------


def metric_rows(steps: range, table: str) -> list[dict]:
    return [{"global_step": s, "table": table, "loss": 1.0 / (s + 1)} for s in steps]


@pytest.mark.parametrize("where", ["plain-path", "uri"])
def test_metrics_keep_their_rows_and_drop_those_after_a_resumed_checkpoint(tmp_path, where):
    run = tmp_path / "run"
    location = run if where == "plain-path" else locate(f"file://{run}")
    log = MetricsLog(location)
    log.append("rounds", metric_rows(range(1, 5), "rounds"))
    log.append("epochs", metric_rows(range(2, 5, 2), "epochs"))
    log.flush()
    log.append("rounds", metric_rows(range(5, 9), "rounds"))
    log.persist()  # through a URI rows reach storage here (at each checkpoint); locally at each append

    reopened = MetricsLog(location)  # what a resumed driver sees
    assert reopened.rows("rounds") == metric_rows(range(1, 9), "rounds")
    reopened.truncate_after(6)
    assert MetricsLog(location).rows("rounds") == metric_rows(range(1, 7), "rounds")
    assert rows(run, "rounds") == metric_rows(range(1, 7), "rounds")
    assert pq.read_table(run / "metrics" / "rounds.parquet").to_pylist() == metric_rows(range(1, 7), "rounds")
    assert MetricsLog(location).rows("epochs") == metric_rows(range(2, 5, 2), "epochs")


def test_a_tail_of_rows_left_stale_by_a_crash_mid_flush_is_not_read_twice(tmp_path):
    location = locate(f"file://{tmp_path}/run")
    log = MetricsLog(location)
    log.append("rounds", metric_rows(range(1, 4), "rounds"))
    log.persist()
    tail = tmp_path / "run" / "metrics" / "rounds.tail.jsonl"
    stale = tail.read_bytes()
    log.flush()
    assert not tail.exists()
    tail.write_bytes(stale)  # the flush wrote rounds.jsonl whole, then died before it removed the tail

    assert MetricsLog(location).rows("rounds") == metric_rows(range(1, 4), "rounds")


# --- whole runs ---------------------------------------------------------------------------------------------


def test_a_run_at_a_file_uri_stopped_and_resumed_from_that_uri_matches_a_plain_path_run(reference_run, tmp_path):
    run = tmp_path / "run"
    uri = f"file://{run}"
    with pytest.raises(RunStopped):
        train(small_config(), uri, max_rounds=6, quiet=True)
    assert read_state(run / "checkpoints" / "last")["global_step"] > 0
    assert not (run / "final").exists()

    train(small_config(), uri, resume=True, quiet=True)

    assert_same_run(run, reference_run)
    assert not any(p.name.startswith(".") for p in run.rglob("*")), "a staged copy or tail was left behind"


def test_a_run_through_a_store_that_cannot_rename_or_append_matches_a_plain_path_run(reference_run, tmp_path):
    store = DiskObjectStore(tmp_path)
    location = Location(pafs.PyFileSystem(store), "run")
    with pytest.raises(RunStopped):
        train(small_config(), location, max_rounds=9, quiet=True)

    train(small_config(), location, resume=True, quiet=True)  # DiskObjectStore raises on any rename or append

    assert_same_run(tmp_path / "run", reference_run)
    assert os.path.isfile(tmp_path / "run" / "metrics" / "rounds.parquet")
