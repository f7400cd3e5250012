"""The data folder the Ray workers get is the one the user named, made absolute on the driver: a worker's working
directory is Ray's session folder, where a relative path names another place. The Ray run with a relative
data.root is tests/ray/test_ray_backend.py; this covers every way of naming the folder, without Ray."""

from __future__ import annotations

import os

import pytest

from conftest import tiny_config
from generalist.distributed.ray_backend import with_driver_paths


@pytest.mark.parametrize("how", ["data.root", "GENERALIST_DATA"])
def test_a_relative_data_folder_is_made_absolute_against_the_drivers_working_directory(tmp_path, monkeypatch, how):
    (tmp_path / "data").mkdir()
    (tmp_path / "driver").mkdir()
    monkeypatch.chdir(tmp_path / "driver")
    if how == "data.root":
        config = tiny_config("generalist-d-small", 'data.root="../data"')
    else:
        config = tiny_config("generalist-d-small", "data.root=null")
        monkeypatch.setenv("GENERALIST_DATA", "../data")
    shipped = with_driver_paths(config)
    assert os.path.isabs(shipped.data.root)
    assert os.path.samefile(shipped.data.root, tmp_path / "data")
    assert config.data.root == ("../data" if how == "data.root" else None), "the user's config is not changed"


def test_an_absolute_folder_is_shipped_as_given(tmp_path, monkeypatch):
    monkeypatch.delenv("GENERALIST_DATA", raising=False)
    config = tiny_config("generalist-d-small", data_root=tmp_path)
    assert with_driver_paths(config).data.root == str(tmp_path)
