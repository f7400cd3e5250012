"""Where `make run` finds its data: $GENERALIST_DATA, else ../shared/data where it exists, else a cache folder
in the user's home that it downloads into. Checked with `make -n` (prints the commands, runs none) on a copy of
the Makefile in a folder whose ../shared/data exists or not. Under 1 s."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def dry_run_make_run(repo: Path, home: Path, env_data: str | None = None) -> str:
    repo.mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "requirements", repo / "requirements")
    env = {k: v for k, v in os.environ.items() if k not in ("GENERALIST_DATA", "MAKEFLAGS", "MAKELEVEL")}
    env["HOME"] = str(home)
    if env_data is not None:
        env["GENERALIST_DATA"] = env_data
    done = subprocess.run(["make", "-n", "-C", str(repo), "run"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def train_line(out: str) -> str:
    return next(line for line in out.splitlines() if " train --recipe " in line)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_without_shared_data_make_run_downloads_into_a_cache_in_home_and_says_where(tmp_path):
    home = tmp_path / "home"
    out = dry_run_make_run(tmp_path / "work" / "repo", home)
    cache = home / ".cache" / "generalist" / "data"
    assert f"GENERALIST_DATA={cache} " in train_line(out) and "data.download=true" in out
    assert f"data: {cache} (what is missing is downloaded there)" in out


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_shared_data_is_kept_when_it_exists_and_nothing_is_downloaded(tmp_path):
    shared = tmp_path / "work" / "shared" / "data"
    shared.mkdir(parents=True)
    out = dry_run_make_run(tmp_path / "work" / "repo", tmp_path / "home")
    assert f"GENERALIST_DATA={shared} " in train_line(out) and "data.download=false" in out


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_generalist_data_wins_over_both(tmp_path):
    (tmp_path / "work" / "shared" / "data").mkdir(parents=True)
    out = dry_run_make_run(tmp_path / "work" / "repo", tmp_path / "home", env_data="/data/mine")
    assert "GENERALIST_DATA=/data/mine " in train_line(out) and "data.download=false" in out
