"""`generalist eval` and `generalist report` on a run folder given as a URI.

A file:// URI goes through pyarrow exactly as s3:// or gs:// would (generalist.storage), on the local disk,
so the tests can read what landed "on the store". The mirror goes to a temporary GENERALIST_CACHE."""

from __future__ import annotations

import json

import pytest
import torch

from generalist.cli import main

EVAL = ["--n", "12", "--batch-size", "12", "--autoattack", "none", "--pgd-steps", "2", "--threat", "Linf",
        "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root):
    from conftest import tiny_config
    from generalist.distributed import train

    folder = tmp_path_factory.mktemp("remote") / "tiny-run"
    before = torch.get_num_threads()
    train(tiny_config("generalist-d-small", data_root=data_root), folder, quiet=True)
    torch.set_num_threads(before)
    return folder


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENERALIST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_eval_of_a_uri_run_writes_back_to_the_store_with_the_numbers_of_a_local_eval(run, data_root, tmp_path,
                                                                                      cache, capsys):
    uri = f"file://{run}"
    assert main(["eval", uri, "--data-root", str(data_root), *EVAL]) == 0, capsys.readouterr().err
    assert f"wrote {uri}/eval/global/eval.json" in capsys.readouterr().out
    remote = json.loads((run / "eval" / "global" / "eval.json").read_text())
    assert remote["model"]["run_dir"] == uri  # where the model came from, not the mirror
    assert remote["model"]["checkpoint"] == f"{uri}/final/global.pt"
    assert (run / "eval" / "global" / "points.parquet").is_file()
    assert any(cache.rglob("config.json"))  # it was read through the mirror

    local_out = tmp_path / "local-eval"
    assert main(["eval", str(run), "--data-root", str(data_root), "--out", str(local_out), *EVAL]) == 0
    local = json.loads((local_out / "eval.json").read_text())
    assert (remote["clean_acc"], remote["union_acc"], remote["threats"]["Linf"]["counts"]) == \
        (local["clean_acc"], local["union_acc"], local["threats"]["Linf"]["counts"])


def test_eval_out_may_be_a_uri(run, data_root, tmp_path, capsys):
    target = tmp_path / "store" / "evals" / "tiny"
    assert main(["eval", str(run), "--data-root", str(data_root), "--out", f"file://{target}", *EVAL]) == 0, \
        capsys.readouterr().err
    assert json.loads((target / "eval.json").read_text())["n_examples"] == 12


def test_report_of_a_uri_run_names_it_as_given(run, tmp_path, capsys):
    uri = f"file://{run}"
    out = tmp_path / "report"
    assert main(["report", uri, "--out", str(out)]) == 0, capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert f"- `{uri}`: generalist-d-small, seed 0" in report
    assert (out / "curves-tiny-run.png").is_file()


def test_a_uri_that_is_not_a_run_folder_is_one_clear_error(tmp_path, capsys):
    code = main(["eval", f"file://{tmp_path}/nothing-here", *EVAL])
    assert code == 2
    assert "is not a run folder (no config.json there)" in capsys.readouterr().err
