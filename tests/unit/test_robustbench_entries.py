"""Each evaluated threat is a RobustBench entry of its own in eval.json, and its model_info file has every field
RobustBench's has (generalist/evaluation/record.py, model_info.py).

The block records are written by hand, so the numbers are known and each threat's differ: a lost, merged or
swapped threat entry changes what the tests read. No model is trained and no attack is run (under 2 s)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from generalist.data import TensorData
from generalist.evaluation.block_attacks import build_attacks
from generalist.evaluation.model_info import model_info, write_model_info
from generalist.evaluation.model_loading import ModelSource
from generalist.evaluation.point_table import point_table, summarize
from generalist.evaluation.record import eval_record
from generalist.evaluation.spec import EvalSpec
from generalist.evaluation.threat_spec import ThreatSpec

# RobustBench's ModelInfo (robustbench/utils.py) for the Linf and L2 leaderboards, as its files under
# model_info/<dataset>/<threat_model>/ spell them, in its order. Written out here rather than imported, so that
# dropping or renaming a field in generalist fails this test.
ROBUSTBENCH_MODEL_INFO = ["link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                          "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote"]

LABELS = [0, 1, 2, 3, 4, 5, 6, 7]
CLEAN_PRED = [0, 1, 2, 3, 4, 5, 6, 9]  # 7 of 8 right: clean_acc 87.50
# Per threat: how many of the 7 clean-correct points PGD and AutoAttack leave right (all different).
SURVIVORS = {"Linf": {"pgd": 5, "aa": 4}, "L2": {"pgd": 6, "aa": 3}, "L1": {"pgd": 2, "aa": 1}}
THREATS = {"Linf": "8/255", "L2": "0.5", "L1": "12"}


def _predictions(survivors: int) -> list[int]:
    """The first `survivors` points predicted right, every other one wrong."""
    return [label if i < survivors else (label + 1) % 10 for i, label in enumerate(LABELS)]


def _record(autoattack: str = "standard", aa_attacks: list[str] | None = None) -> dict:
    spec = EvalSpec(threats=[ThreatSpec.parse(f"{norm}={eps}") for norm, eps in THREATS.items()], n=len(LABELS),
                    batch_size=len(LABELS), pgd_steps=20, autoattack=autoattack, aa_attacks=aa_attacks)
    attacks = build_attacks(spec, torch.device("cpu"))
    block = {"clean": {"clean_pred": CLEAN_PRED}}
    for norm in THREATS:
        block[norm] = {"attacks": [{"key": a.key, "pred": _predictions(SURVIVORS[norm][a.key]),
                                    "norm": [0.0] * len(LABELS), "seconds": 0.1,
                                    **({"broken_by": [""] * len(LABELS)} if a.key == "aa" else {})}
                                   for a in attacks[norm]]}
    points = TensorData(torch.zeros(len(LABELS), 3, 2, 2, dtype=torch.uint8), torch.tensor(LABELS))
    summary = summarize(point_table(points, spec, [0], {0: block}), spec, warn=False)
    source = ModelSource(model=nn.Linear(2, 2), name="global", architecture="small-cnn", dataset="cifar10",
                         checkpoint="/runs/d-seed0/final/global.pt", run_dir="/runs/d-seed0", config=None,
                         model_kwargs={})
    record = eval_record(summary, spec, source, attacks, seconds=1.0, metadata={}, device="cpu", threads=1,
                         shards=1, split_size=10000)
    return json.loads(json.dumps(record))  # as eval.json holds it


def test_every_threat_of_a_multi_threat_evaluation_keeps_a_robustbench_entry_of_its_own():
    record = _record()
    assert list(record["threats"]) == ["Linf", "L2", "L1"]
    for norm, eps in THREATS.items():
        entry = record["threats"][norm]
        assert (entry["threat_model"], entry["eps"]) == (norm, eps)
        assert (entry["name"], entry["dataset"], entry["architecture"], entry["n_examples"]) == \
            ("d-seed0/global", "cifar10", "small-cnn", 8)
        assert (entry["clean_acc"], entry["additional_data"], entry["number_forward_passes"]) == ("87.50", False, 1)
        assert entry["pgd_acc"] == f"{100 * SURVIVORS[norm]['pgd'] / 8:.2f}"
        assert entry["autoattack_acc"] == f"{100 * SURVIVORS[norm]['aa'] / 8:.2f}"
        assert entry["attacks"]["aa"]["version"] == "standard"
    # The top level still carries the first threat's entry for readers of one RobustBench entry per file.
    assert {k: record[k] for k in ("threat_model", "eps", "autoattack_acc")} == \
        {k: record["threats"]["Linf"][k] for k in ("threat_model", "eps", "autoattack_acc")}


def test_a_model_info_file_per_threat_holds_every_robustbench_field(tmp_path):
    record = _record()
    written = write_model_info(record, str(tmp_path / "model_info"))
    assert written == [str(tmp_path / "model_info" / "cifar10" / norm / "d-seed0_global.json") for norm in THREATS]
    for norm, path in zip(THREATS, written):
        info = json.loads(open(path).read())
        assert list(info) == ROBUSTBENCH_MODEL_INFO
        entry = record["threats"][norm]
        assert {k: info[k] for k in ("name", "dataset", "architecture", "eps", "clean_acc", "autoattack_acc",
                                     "additional_data", "number_forward_passes")} == \
            {k: entry[k] for k in ("name", "dataset", "architecture", "eps", "clean_acc", "autoattack_acc",
                                   "additional_data", "number_forward_passes")}
        # What only the model's authors know stays null, as in RobustBench's own benchmark(to_disk=True).
        assert [info[k] for k in ("link", "authors", "venue", "reported")] == [None] * 4
        assert "standard AutoAttack" in info["footnote"] and "first 8 of the 10000 cifar10" in info["footnote"]


def test_a_second_write_replaces_the_file_of_the_same_model_and_threat(tmp_path):
    write_model_info(_record(autoattack="none"), str(tmp_path))
    write_model_info(_record(), str(tmp_path))
    assert json.loads((tmp_path / "cifar10" / "L2" / "d-seed0_global.json").read_text())["autoattack_acc"] == "37.50"


@pytest.mark.parametrize("autoattack, aa_attacks, autoattack_acc, says", [
    ("none", None, None, "AutoAttack not run (PGD accuracy 62.50)"),
    ("custom", ["apgd-ce"], "50.00", "a non-standard AutoAttack (apgd-ce"),
])
def test_a_model_info_says_when_its_number_is_not_the_leaderboards_standard_autoattack(
        autoattack, aa_attacks, autoattack_acc, says):
    info = model_info(_record(autoattack, aa_attacks), "Linf")
    assert list(info) == ROBUSTBENCH_MODEL_INFO
    assert info["autoattack_acc"] == autoattack_acc and says in info["footnote"]
