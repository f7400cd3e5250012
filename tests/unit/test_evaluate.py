"""The reported evaluation: real AutoAttack (pyautoattack) and PGD on a tiny trained model, real CIFAR-10 points.

What a user relies on: our AutoAttack numbers are pyautoattack's own; nothing an attack reports about itself is
trusted (points checked against the eps-ball and [0, 1], predictions recomputed); the model is evaluated in
eval mode and left untouched; fixed seeds give the same numbers; an interrupted run resumes to the same
numbers; PGD beating AutoAttack is flagged; bad input is one clear line. About 80 s on 2 cores (one tiny
training run, one standard AutoAttack on 32 points, the rest with cut-down attacks).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time

import pytest
import torch

from generalist.attacks import pgd
from generalist.cli import main
from generalist.data import TensorData, eval_batches, load_split
from generalist.errors import CheckpointError, ConfigError, GeneralistError
from generalist.evaluation.block_attacks import PGDAttack
from generalist.evaluation.checks import AttackCheckError, EvaluationWarning, check_adversarial
from generalist.evaluation.model_loading import load_model
from generalist.evaluation.point_table import read_points_parquet, summarize
from generalist.evaluation.run import EvaluationStopped, evaluate_points
from generalist.evaluation.spec import EvalSpec
from generalist.evaluation.threat_spec import ThreatSpec, format_eps
from generalist.threat import get_threat

N = 32
# Cut-down AutoAttack for the tests that are not about AutoAttack's strength (seconds instead of minutes).
QUICK_AA = {"apgd.n_iter": 10, "apgd_targeted.n_iter": 10, "apgd_targeted.n_target_classes": 3,
            "fab.n_iter": 10, "fab.n_target_classes": 3, "square.n_queries": 50}


def quick_spec(**changes) -> EvalSpec:
    fields = {"threats": [ThreatSpec.parse("Linf"), ThreatSpec.parse("L2")], "n": N, "batch_size": 16, "seed": 0,
              "pgd_steps": 5, "autoattack": "standard", "aa_options": QUICK_AA}
    fields.update(changes)
    return EvalSpec(**fields)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the machine is shared, and thread count is part of CPU determinism."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_TRAINED: dict[str, object] = {}


@pytest.fixture
def run_dir(tiny, tmp_path_factory):
    """One tiny run for the whole module (cached here: `tiny` is a function-scoped fixture)."""
    if "run" not in _TRAINED:
        from generalist.distributed import train

        folder = tmp_path_factory.mktemp("eval") / "run"
        train(tiny("generalist-d-small"), folder, quiet=True)
        _TRAINED["run"] = folder
    return _TRAINED["run"]


@pytest.fixture
def model(run_dir):
    return load_model(run_dir).model


@pytest.fixture(scope="module")
def test_split(data_root):
    return load_split("cifar10", data_root, train=False)


@pytest.fixture(scope="module")
def points(test_split):
    x, y = next(eval_batches(TensorData(test_split.x[:N], test_split.y[:N]), N))
    return x, y


# --- our numbers are pyautoattack's -----------------------------------------------------------------------


def _direct(model, norm: str, eps: float, x, y, options: dict | None = None):
    """pyautoattack called the way its README does, with any option set on its own attack objects."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(model, norm=norm, eps=eps, version="standard", seed=0)
    for key, value in (options or {}).items():
        owner, attr = key.split(".")
        obj = getattr(aa, owner)
        setattr(obj, attr, value)
        if attr == "n_iter":  # as if APGD had been built with n_iter=value
            obj.n_iter_orig, obj.n_iter_2 = value, max(int(0.22 * value), 1)
            obj.n_iter_min, obj.size_decr = max(int(0.06 * value), 1), max(int(0.03 * value), 1)
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(y))
    with torch.no_grad():
        return x_adv, model(x_adv).argmax(1)


def test_standard_autoattack_numbers_equal_calling_pyautoattack_directly(model, test_split, points):
    x, y = points
    spec = EvalSpec(threats=[ThreatSpec.parse("Linf")], n=N, batch_size=N, pgd_steps=0)
    ours = evaluate_points(model, test_split, spec).table
    direct_x, direct_pred = _direct(model, "Linf", 8 / 255, x, y)
    assert ours["Linf_aa_pred"] == direct_pred.tolist()
    assert sum(ours["Linf_aa_correct"]) == int((direct_pred == y).sum())
    # the same points, not just the same verdicts: every perturbation norm agrees to the last bit
    direct_norms = get_threat("Linf", 8 / 255).norm((direct_x - x).double()).float()
    assert ours["Linf_aa_norm"] == direct_norms.tolist()
    assert sum(ours["Linf_aa_correct"]) < sum(ours["clean_correct"]), "the test needs points AutoAttack fools"


def test_l1_autoattack_with_its_own_standard_settings_equals_pyautoattack(model, test_split, points):
    # L1's standard version differs (APGD with 5 restarts and large-eps schedule, 5 targets); iterations cut.
    x, y = points
    options = {"apgd.n_iter": 10, "apgd_targeted.n_iter": 10, "fab.n_iter": 10, "square.n_queries": 50}
    spec = EvalSpec(threats=[ThreatSpec.parse("L1")], n=N, batch_size=N, pgd_steps=0, aa_options=options)
    ours = evaluate_points(model, test_split, spec).table
    _, direct_pred = _direct(model, "L1", 12.0, x, y, options)
    assert ours["L1_aa_pred"] == direct_pred.tolist()


# --- checks that make it trustworthy -------------------------------------------------------------------


def test_clean_accuracy_is_recomputed_independently(model, test_split, points):
    x, y = points
    result = evaluate_points(model, test_split, quick_spec(autoattack="none"))
    with torch.no_grad():  # one point at a time: no batch can hide anything
        one_by_one = [int(model(x[i:i + 1]).argmax(1)) == int(y[i]) for i in range(N)]
    from pyautoattack import AutoAttack

    assert result.table["clean_correct"] == one_by_one
    summary = summarize(result.table, quick_spec(autoattack="none"), warn=False)
    assert summary["counts"]["clean"] == sum(one_by_one)
    assert summary["counts"]["clean"] / N == AutoAttack(model, norm="Linf", eps=8 / 255).clean_accuracy(x, y)
    assert summary["clean_acc"] == f"{100 * sum(one_by_one) / N:.2f}"


class ClaimsEverything(PGDAttack):
    """A broken attack: returns the clean points but reports every point as broken by APGD-CE."""

    key = "aa"

    def run_block(self, model, x, y, clean_correct, start):
        return x.clone(), {"broken_by": ["apgd-ce"] * len(y)}


def test_robust_accuracy_is_recomputed_from_the_returned_points_not_taken_from_the_attack(model, test_split):
    spec = quick_spec(threats=[ThreatSpec.parse("Linf")], pgd_steps=0)
    liar = ClaimsEverything(get_threat("Linf", 8 / 255), steps=1, restarts=1, step_size=1 / 255, seed=0)
    result = evaluate_points(model, test_split, spec, attacks={"Linf": [liar]})
    # the attack claims 0% robust accuracy; its points are the clean points, so robust == clean
    assert result.table["Linf_aa_correct"] == result.table["clean_correct"]
    with pytest.warns(EvaluationWarning, match="recomputed prediction calls correct"):
        summary = summarize(result.table, spec)
    assert summary["threats"]["Linf"]["autoattack_acc"] == summary["clean_acc"]


class HelpfulPGD(PGDAttack):
    """PGD that descends the loss: it moves points towards their true class, so it fixes clean mistakes."""

    def run_block(self, model, x, y, clean_correct, start):
        x_adv = pgd(model, x, y, self.threat, steps=self.steps, step_size=self.step_size, random_start=False,
                    loss_fn=lambda logits, labels: -torch.nn.functional.cross_entropy(logits, labels, reduction="none"))
        return x_adv, {}


def test_a_point_wrong_on_clean_input_never_counts_as_robust(model, test_split):
    spec = quick_spec(threats=[ThreatSpec.parse("Linf")], autoattack="none")
    helper = HelpfulPGD(get_threat("Linf", 8 / 255), steps=10, restarts=1, step_size=2 / 255, seed=0)
    table = evaluate_points(model, test_split, spec, attacks={"Linf": [helper]}).table
    fixed = [i for i in range(N) if not table["clean_correct"][i] and table["Linf_pgd_pred"][i] == table["label"][i]]
    assert fixed, "the helpful attack should fix some clean mistakes"
    assert not any(table["Linf_pgd_correct"][i] or table["Linf_robust"][i] or table["union_robust"][i] for i in fixed)
    summary = summarize(table, spec, warn=False)
    assert summary["threats"]["Linf"]["counts"]["pgd_acc"] <= summary["counts"]["clean"]


def test_every_returned_point_lies_in_its_eps_ball_and_in_the_box(model, test_split, points):
    result = evaluate_points(model, test_split, quick_spec(threats=[ThreatSpec.parse(t) for t in ("Linf", "L2", "L1")]))
    for norm, eps in (("Linf", 8 / 255), ("L2", 0.5), ("L1", 12.0)):
        for key in ("pgd", "aa"):
            norms = torch.tensor(result.table[f"{norm}_{key}_norm"])
            assert float(norms.max()) <= eps * (1 + 1e-5), (norm, key)
    # PGD reaches the boundary of the Linf ball: the norms are real measurements, not zeros
    assert max(result.table["Linf_pgd_norm"]) == pytest.approx(8 / 255, rel=1e-4)
    x, y = points
    x_adv = pgd(model.eval(), x, y, get_threat("L2", 0.5), steps=3, step_size=0.2, generator=torch.Generator())
    assert float(check_adversarial(x, x_adv, get_threat("L2", 0.5), "pgd").max()) <= 0.5 * (1 + 1e-5)


def test_an_attack_that_leaves_the_eps_ball_is_refused(model, test_split):
    # A real PGD configured with twice the budget of the threat it claims to evaluate.
    spec = quick_spec(threats=[ThreatSpec.parse("Linf")])
    broken = PGDAttack(get_threat("Linf", 16 / 255), steps=5, restarts=1, step_size=4 / 255, seed=0)
    with pytest.raises(AttackCheckError, match="outside the eps-ball") as error:
        evaluate_points(model, test_split, spec, attacks={"Linf": [broken]})
    assert isinstance(error.value, GeneralistError) and "\n" not in str(error.value)


def test_an_attack_that_leaves_the_image_box_is_refused(points):
    x, _ = points
    unclipped = x + 8 / 255  # an FGSM-like step without the clamp to [0, 1]
    with pytest.raises(AttackCheckError, match=r"outside \[0, 1\]"):
        check_adversarial(x, unclipped, get_threat("Linf", 8 / 255), "fgsm-without-clip")
    with pytest.raises(AttackCheckError, match="NaN"):
        check_adversarial(x, torch.full_like(x, float("nan")), get_threat("Linf", 8 / 255), "nan")


def test_evaluation_runs_in_eval_mode_needs_no_gradient_and_leaves_the_model_as_it_was(model, test_split):
    spec = quick_spec(threats=[ThreatSpec.parse("Linf")], aa_options={**QUICK_AA, "square.n_queries": 5})
    reference = evaluate_points(model, test_split, spec).table
    caller = copy.deepcopy(model).train()  # a caller that forgot eval mode, under no_grad
    before = copy.deepcopy(caller.state_dict())
    rng = torch.get_rng_state()
    with torch.no_grad():
        table = evaluate_points(caller, test_split, spec).table
    assert table == reference  # BatchNorm used its running statistics: eval mode
    assert caller.training, "the caller's mode is restored"
    assert all(torch.equal(before[k], v) for k, v in caller.state_dict().items()), "BN statistics untouched"
    assert all(p.grad is None and p.requires_grad for p in caller.parameters())  # FAB's backward() wrote nothing
    assert torch.equal(torch.get_rng_state(), rng), "pyautoattack reseeds the global RNG; we restore it"
    with torch.inference_mode():
        assert evaluate_points(caller, test_split, spec).table == reference


def test_the_same_checkpoint_gives_the_same_numbers(run_dir, test_split, points):
    spec = quick_spec()
    first = evaluate_points(load_model(run_dir).model, test_split, spec).table
    second = evaluate_points(load_model(run_dir).model, test_split, spec).table
    assert first == second
    # the numbers are fixed by the seed, not by luck: another seed moves PGD's random start
    x, y = points
    model = load_model(run_dir).model
    threat = get_threat("L2", 0.5)
    runs = {seed: PGDAttack(threat, steps=2, restarts=1, step_size=0.125, seed=seed).run_block(model, x, y, None, 0)[0]
            for seed in (0, 0, 1)}
    again = PGDAttack(threat, steps=2, restarts=1, step_size=0.125, seed=0).run_block(model, x, y, None, 0)[0]
    assert torch.equal(runs[0], again) and not torch.equal(runs[0], runs[1])


def test_pgd_fooling_points_autoattack_does_not_is_warned(model, test_split):
    # A weakened AutoAttack (Square with 2 queries) against PGD-10: PGD wins on some points.
    spec = quick_spec(threats=[ThreatSpec.parse("Linf")], pgd_steps=10, autoattack="custom", aa_attacks=["square"],
                      aa_options={"square.n_queries": 2})
    table = evaluate_points(model, test_split, spec).table
    expected = sum(1 for p, a in zip(table["Linf_pgd_correct"], table["Linf_aa_correct"]) if a and not p)
    assert expected > 0
    with pytest.warns(EvaluationWarning, match=f"PGD fools {expected} of {N} points"):
        summary = summarize(table, spec)
    assert summary["threats"]["Linf"]["counts"]["pgd_beats_autoattack"] == expected
    # the worst case per point takes the stronger attack
    assert summary["threats"]["Linf"]["counts"]["robust"] == sum(
        1 for p, a in zip(table["Linf_pgd_correct"], table["Linf_aa_correct"]) if p and a)


def test_union_counts_a_point_only_if_no_attack_under_any_threat_fools_it(model, test_split):
    spec = quick_spec(threats=[ThreatSpec.parse(t) for t in ("Linf", "L2", "L1")])
    table = evaluate_points(model, test_split, spec).table
    for i in range(N):
        survives = table["clean_correct"][i] and all(
            table[f"{t}_{k}_correct"][i] for t in ("Linf", "L2", "L1") for k in ("pgd", "aa"))
        assert table["union_robust"][i] == survives
    summary = summarize(table, spec, warn=False)
    per_threat = [summary["threats"][t]["counts"]["robust"] for t in ("Linf", "L2", "L1")]
    assert summary["counts"]["union"] <= min(per_threat)


def test_an_interrupted_evaluation_resumes_to_the_same_numbers(model, test_split, tmp_path):
    spec = quick_spec()
    uninterrupted = evaluate_points(model, test_split, spec).table
    with pytest.raises(EvaluationStopped):
        evaluate_points(model, test_split, spec, state_dir=tmp_path, max_blocks=1)
    done = sorted(p.name for p in (tmp_path / "blocks").iterdir())
    assert done == ["00000000-L2.json", "00000000-Linf.json", "00000000-clean.json"]
    ran = []
    resumed = evaluate_points(model, test_split, spec, state_dir=tmp_path, log=ran.append)
    assert resumed.table == uninterrupted
    assert all(message.startswith("block 16-") for message in ran), "the finished block was not run again"
    with pytest.raises(CheckpointError, match="another model, points or settings"):
        evaluate_points(model, test_split, quick_spec(seed=5), state_dir=tmp_path)


def test_a_killed_generalist_eval_resumes_where_it_stopped(run_dir, data_root, test_split, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", str(run_dir), "--n", "64", "--batch-size", "8", "--threat", "Linf", "--pgd-steps", "3",
            "--threads", "1", "--out", str(out), "--data-root", str(data_root),
            *[f"--aa-option={k}={v}" for k, v in QUICK_AA.items()]]
    process = subprocess.Popen([sys.executable, "-m", "generalist.cli", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while len(list(out.glob("state/*/blocks/*-Linf.json"))) < 2:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no block finished in time"
        time.sleep(0.02)
    process.kill()  # SIGKILL: no cleanup, no chance to write anything more
    process.wait()
    finished = len(list(out.glob("state/*/blocks/*-Linf.json")))
    assert not (out / "eval.json").exists() and finished < 8
    assert main(args) == 0
    redone = [line for line in capsys.readouterr().out.splitlines() if line.startswith("block ")]
    assert len(redone) == 8 - finished, "finished blocks are not run again"
    spec = EvalSpec(threats=[ThreatSpec.parse("Linf")], n=64, batch_size=8, pgd_steps=3, aa_options=QUICK_AA)
    reference = evaluate_points(load_model(run_dir).model, test_split, spec).table
    table = read_points_parquet(out / "points.parquet")
    assert {k: v for k, v in table.items() if k != "model"} == reference


# --- the command --------------------------------------------------------------------------------------


def test_eps_is_written_as_a_fraction_in_reports():
    assert [format_eps(e) for e in (8 / 255, 0.5, 12.0, 4 / 255, 0.25)] == ["8/255", "0.5", "12", "4/255", "0.25"]
    assert ThreatSpec.parse("linf=16/255") == ThreatSpec("Linf", 16 / 255, "16/255")


def test_generalist_eval_writes_a_robustbench_shaped_eval_json_and_per_point_parquet(run_dir, data_root, capsys):
    out, model_info = run_dir.parent / "cli-eval", run_dir.parent / "model_info"
    options = [f"--aa-option={k}={v}" for k, v in QUICK_AA.items()]
    code = main(["eval", str(run_dir), "--n", "24", "--batch-size", "12", "--pgd-steps", "3", "--out", str(out),
                 "--data-root", str(data_root), "--quiet", "--model-info", str(model_info), *options])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "eval.json").read_text())
    for key in ("clean_acc", "autoattack_acc", "threat_model", "eps", "architecture", "dataset", "n_examples",
                "union_acc", "threats", "seeds", "metadata"):
        assert key in record, key
    assert (record["threat_model"], record["eps"], record["architecture"], record["dataset"], record["n_examples"]) \
        == ("Linf", "8/255", "small-cnn", "cifar10", 24)
    assert [record["threats"][t]["eps"] for t in ("Linf", "L2", "L1")] == ["8/255", "0.5", "12"]
    for norm, entry in record["threats"].items():  # each threat a RobustBench entry, and its model_info file
        assert (entry["threat_model"], entry["clean_acc"], entry["n_examples"]) == (norm, record["clean_acc"], 24)
        info = json.loads((model_info / "cifar10" / norm / f"{run_dir.name}_global.json").read_text())
        assert (info["eps"], info["clean_acc"], info["autoattack_acc"]) == \
            (entry["eps"], entry["clean_acc"], entry["autoattack_acc"])
    assert record["standard_autoattack"] is False  # cut-down options are not standard AutoAttack, and it says so
    assert record["metadata"]["versions"]["pyautoattack"] == "0.2.0" and record["metadata"]["command"]
    table = read_points_parquet(out / "points.parquet")
    assert table["index"] == list(range(24)) and set(table["model"]) == {"global"}
    assert record["counts"]["union"] == sum(table["union_robust"])
    assert record["clean_acc"] == f"{100 * sum(table['clean_correct']) / 24:.2f}"
    assert record["counts"]["clean"] == sum(table["clean_correct"])


@pytest.mark.parametrize("args, error, text", [
    (["--threat", "Linfinity"], ConfigError, "unknown threat model 'Linfinity'"),
    (["--threat", "L2=0"], ConfigError, "eps for L2 must be > 0"),
    (["--threat", "Linf=-8/255"], ConfigError, "must be > 0"),
    (["--n", "10001"], ConfigError, "larger than the 10000 points"),
    (["--autoattack", "apgd-ce,fgsm"], ConfigError, "unknown AutoAttack attack 'fgsm'"),
])
def test_bad_evaluation_input_is_one_clear_line(run_dir, data_root, capsys, args, error, text):
    code = main(["eval", str(run_dir), "--data-root", str(data_root), *args])
    err = capsys.readouterr().err.strip()
    assert code == error.exit_code and err.count("\n") == 0 and err.startswith("error: ") and text in err, err


def test_a_checkpoint_of_another_architecture_is_refused_clearly(run_dir, data_root, capsys, tmp_path):
    weights = run_dir / "final" / "global.pt"
    bare = tmp_path / "model.pt"  # the small-cnn weights outside their run folder
    bare.write_bytes(weights.read_bytes())
    code = main(["eval", str(bare), "--arch", "resnet18", "--dataset", "cifar10", "--data-root", str(data_root)])
    err = capsys.readouterr().err.strip()
    assert code == CheckpointError.exit_code and err.count("\n") == 0
    assert "is not a resnet18 checkpoint" in err and "--arch" in err
    with pytest.raises(CheckpointError, match="contradicts the run's config"):
        load_model(run_dir, architecture="resnet18")
    with pytest.raises(ConfigError, match="has no learner 'adv'"):
        load_model(run_dir, learner="adv")


def test_the_global_learner_is_the_default_and_a_base_learner_is_evaluated_on_request(run_dir):
    from generalist.checkpoint import load_payload, load_state_dict_file

    default = load_model(run_dir)
    assert default.name == "global" and default.checkpoint.endswith("final/global.pt")
    shipped = load_state_dict_file(run_dir / "final" / "global.pt")
    assert all(torch.equal(shipped[k], v) for k, v in default.model.state_dict().items())
    for weights in ("model", "ema"):
        linf = load_model(run_dir, learner="linf", weights=weights)
        saved = load_payload(run_dir / "checkpoints" / "last", "learner-linf")[weights]
        assert linf.name == "linf" and linf.checkpoint.endswith("learner-linf.pt")
        assert all(torch.equal(saved[k], v) for k, v in linf.model.state_dict().items())
        assert not linf.model.training
