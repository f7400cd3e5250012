"""`generalist eval` on a GPU: standard AutoAttack (pyautoattack) on 100 CIFAR-10 test points of a model trained on
the GPU. Marked `gpu`, skipped without CUDA or pyautoattack. About 1 minute on one H100."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from generalist.cli import main
from generalist.distributed import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_generalist_eval_runs_standard_autoattack_on_100_points_on_the_gpu(tmp_path, data_root, capsys):
    pytest.importorskip("pyautoattack")
    run = tmp_path / "run"
    train(tiny_config("pgd-at-small", "runtime.device=cuda"), run, quiet=True)
    out = tmp_path / "eval"
    code = main(["eval", str(run), "--n", "100", "--threat", "Linf", "--device", "cuda", "--out", str(out),
                 "--data-root", str(data_root), "--quiet"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "eval.json").read_text())
    assert record["eval"]["device"].startswith("cuda") and record["n_examples"] == 100
    assert record["standard_autoattack"] is True
    linf = record["threats"]["Linf"]
    assert float(record["autoattack_acc"]) <= float(linf["pgd_acc"]) <= float(record["clean_acc"]), record
