"""Training on a CUDA GPU: the same batches as on the CPU, the fast defaults in use, bf16 learning as fp32 does,
a resumed run byte-identical to an uninterrupted one, the step as a CUDA graph, and learners side by side on their
own streams (the same numbers, and no race under the CUDA sanitizer). Marked `gpu`, skipped without CUDA.

Sizes: small-cnn on real CIFAR-10; about 1-2 minutes on one H100 (the bf16-vs-fp32 runs dominate) before the graph
and stream tests were added, which have not run on a GPU yet (the sanitized run's time is unknown).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from generalist.attacks import pgd
from generalist.distributed import train
from generalist.learner import Learner
from generalist.threat import get_threat
from generalist.training import RunStopped, prepare_run_data

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


def test_a_batch_is_bit_identical_on_cpu_and_gpu_with_the_split_held_on_the_gpu():
    data = prepare_run_data(tiny_config("pgd-at-small"))
    on_gpu = copy.copy(data.stream)
    on_gpu.hold_on(CUDA)
    assert on_gpu.data.x.is_cuda and not data.stream.data.x.is_cuda
    for epoch, step in [(0, 0), (0, 7), (2, 9)]:
        x_cpu, y_cpu = data.stream.batch(epoch, step)
        for x, y in (data.stream.batch(epoch, step, CUDA), on_gpu.batch(epoch, step, CUDA)):
            assert x.is_cuda and torch.equal(x.cpu(), x_cpu) and torch.equal(y.cpu(), y_cpu), (epoch, step)


def test_a_learner_on_the_gpu_uses_channels_last_and_the_split_on_the_device_by_default():
    config = tiny_config("pgd-at-small", "runtime.device=auto")
    data = prepare_run_data(config)
    learner = Learner(config, 0, data.initial_state, data.stream, data.model_kwargs, CUDA)
    conv = next(p for p in learner.model.parameters() if p.dim() == 4)
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    assert learner.stream.data.x.is_cuda
    stats = learner.run_steps(1, 0, 3)
    assert torch.isfinite(torch.tensor(stats.loss))
    assert all(t.is_contiguous() for t in learner.ema.values()), "the EMA stays one flat buffer"


@pytest.mark.parametrize("norm, eps, step_size", [("Linf", 8 / 255, 2 / 255), ("L2", 0.5, 0.125)])
def test_pgd_under_bf16_autocast_on_the_gpu_stays_inside_the_ball_and_the_box(norm, eps, step_size):
    config = tiny_config("pgd-at-small")
    data = prepare_run_data(config)
    learner = Learner(config, 0, data.initial_state, data.stream, data.model_kwargs, CUDA)
    learner.run_steps(1, 0, 5)
    model = learner.model.eval()
    x, y = data.stream.batch(0, 0, CUDA)
    threat = get_threat(norm, eps)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        x_adv = pgd(model, x, y, threat, steps=10, step_size=step_size, generator=torch.Generator().manual_seed(0))
    assert x_adv.dtype == torch.float32 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert threat.norm(x_adv - x).max() <= eps * (1 + 1e-6)


def test_the_local_backend_trains_on_the_gpu(tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_config("generalist-d-small", "runtime.device=auto"), run, quiet=True)
    assert json.loads((run / "metadata.json").read_text())["hardware"]["cuda"], "the run did not see the GPU"
    assert summary["final_validation"]["global"]["clean_acc"] > 0.1


def final_validation(run) -> dict:
    return json.loads((run / "final" / "summary.json").read_text())["final_validation"]["linf"]


# 300 steps of PGD-AT (PGD-3) on 12,800 images; 1,000 validation points.
LONG = ["data.train_subset=12800", "data.batch_size=128", "schedule.epochs=3", "eval.n_examples=1000",
        "data.val_size=1000", "eval.pgd_steps=10", "eval.every_epochs=3", "runtime.device=cuda"]
# Tolerance: two fp32 runs with different seeds differ by about 1-2 points here; bf16 rounding acts like another
# seed, so 5 points (about 3 binomial standard deviations on 1,000 points) separates noise from a broken bf16 path.
TOLERANCE = 0.05


def test_bf16_learns_as_fp32_does_over_300_steps(tmp_path):
    results = {}
    for precision in ("fp32", "bf16"):
        run = tmp_path / precision
        train(tiny_config("pgd-at-small", *LONG, f"runtime.precision={precision}"), run, quiet=True)
        results[precision] = final_validation(run)
    fp32, bf16 = results["fp32"], results["bf16"]
    assert fp32["clean_acc"] > 0.2 and bf16["clean_acc"] > 0.2, results  # chance is 0.1; fp32 on CPU: 0.27
    assert abs(fp32["clean_acc"] - bf16["clean_acc"]) <= TOLERANCE, results
    robust = [k for k in fp32 if k.startswith("pgd_acc_")]
    assert robust and all(abs(fp32[k] - bf16[k]) <= TOLERANCE for k in robust), results


def test_a_compiled_bf16_learner_trains(tmp_path):
    config = tiny_config("pgd-at-small", "runtime.compile=true", "runtime.precision=bf16", "data.train_subset=2560",
                         "learners.0.lr=0.05")
    data = prepare_run_data(config)
    learner = Learner(config, 0, data.initial_state, data.stream, data.model_kwargs, CUDA)
    losses = [learner.run_steps(1, s, 1).loss for s in range(40)]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.1, losses
    assert not any(k.startswith("_orig_mod") for k in learner.state_dict()["model"]), "checkpoints keep plain keys"


def test_a_resumed_gpu_run_ends_byte_identical_to_an_uninterrupted_one(tmp_path):
    # Bit-exact GPU runs are asked for: the GPU default is the fast, autotuned path.
    config = tiny_config("generalist-d-small", "runtime.device=cuda", "runtime.precision=bf16",
                         "runtime.deterministic=true")
    train(config, tmp_path / "reference", quiet=True)
    with pytest.raises(RunStopped):
        train(config, tmp_path / "resumed", max_rounds=14, quiet=True)  # inside epoch 2
    train(config, tmp_path / "resumed", resume=True, quiet=True)
    reference = (tmp_path / "reference" / "final" / "global.pt").read_bytes()
    assert (tmp_path / "resumed" / "final" / "global.pt").read_bytes() == reference


@pytest.mark.parametrize("recipe", ["pgd-at-small", "natural-small"])
def test_the_graph_step_gives_the_losses_of_the_eager_step(recipe):
    """runtime.cuda_graph: after its eager warm-up the step is replayed from a graph, recorded again when the learning
    rate changes (epoch 2 of the tiny schedule has a tenth of epoch 1's), and its losses and weights follow the eager
    step's: the same kernels, the attack's random starts drawn from the same generator. The tolerances were set
    before any GPU ran this test; the message gives the measured differences."""
    from generalist.graph_step import GraphedStep

    rounds, weights = {}, {}
    for graph in (False, True):
        config = tiny_config(recipe, f"runtime.cuda_graph={str(graph).lower()}")
        data = prepare_run_data(config)
        learner = Learner(config, 0, data.initial_state, data.stream, data.model_kwargs, CUDA)
        assert isinstance(learner.train_step, GraphedStep) == graph
        rounds[graph] = [learner.run_steps(1, 0, 6), learner.run_steps(1, 6, 4), learner.run_steps(2, 0, 6)]
        weights[graph] = torch.cat([t.flatten().float() for t in learner.ema.values()])
        if graph:
            assert not learner.train_step.failed, "the capture failed (the notice above says why)"
            assert learner.train_step.captures == len({r.lr for r in rounds[graph]}), "one capture per learning rate"
    eager, graphed = ([r.loss for r in rounds[g]] for g in (False, True))
    drift = ((weights[True] - weights[False]).abs().max() / weights[False].abs().max()).item()
    assert graphed == pytest.approx(eager, rel=1e-3), f"losses eager {eager}, graph {graphed}; weight drift {drift:.2e}"
    assert drift < 1e-3, f"EMA weights differ by {drift:.2e} of their largest (losses {eager} / {graphed})"


@pytest.mark.parametrize("overrides", [["runtime.deterministic=true"], ["runtime.cuda_graph=true"]],
                         ids=["eager-deterministic", "cuda-graph"])
def test_learners_side_by_side_on_their_own_streams_give_the_numbers_of_one_after_another(overrides):
    """runtime.learner_streams: generalist-t's three learners queued on three streams of one GPU (run_round, as the
    training loop runs them) end where the same learners run on the current stream end: bit for bit with
    deterministic eager kernels; with CUDA graphs (cuDNN may pick other algorithms in another run) within the graph
    test's tolerance. The rounds cross an epoch, so the shared stream's new order is read by all three."""
    from generalist.learner import run_round

    losses, weights = {}, {}
    for streams in (False, True):
        config = tiny_config("generalist-t-small", f"runtime.learner_streams={str(streams).lower()}", *overrides)
        data = prepare_run_data(config)
        learners = [Learner(config, k, data.initial_state, data.stream, data.model_kwargs, CUDA) for k in range(3)]
        assert all((learner.cuda_stream is not None) == streams for learner in learners)
        rounds = [run_round(learners, *r) for r in [(1, 0, 6), (1, 6, 4), (2, 0, 6)]]
        losses[streams] = [s.loss for stats in rounds for s in stats]
        weights[streams] = torch.cat([t.flatten().float().cpu() for learner in learners for t in learner.ema.values()])
    drift = ((weights[True] - weights[False]).abs().max() / weights[False].abs().max()).item()
    if "runtime.deterministic=true" in overrides:
        assert losses[True] == losses[False] and drift == 0.0, f"losses {losses}; weight drift {drift:.2e}"
    else:
        assert losses[True] == pytest.approx(losses[False], rel=1e-3), f"losses {losses}; weight drift {drift:.2e}"
        assert drift < 1e-3, f"EMA weights differ by {drift:.2e} of their largest"


# A whole in-process run of generalist-t with each learner on its own stream (validation, checkpoints and
# redistribution included), in a process of its own under the CUDA sanitizer.
SANITIZED_RUN = r'''
import sys
sys.path.insert(0, sys.argv[1])
from conftest import tiny_config
from generalist.distributed import train
config = tiny_config("generalist-t-small", "runtime.learner_streams=true", "runtime.device=cuda",
                     "data.train_subset=320", "schedule.epochs=2")
train(config, sys.argv[2], quiet=True)
print("trained", flush=True)
'''


def test_learner_streams_are_race_free_under_the_cuda_sanitizer(tmp_path):
    """TORCH_CUDA_SANITIZER=1 fails on any access to a tensor from two streams without an ordering between them:
    the learners' streams against the current stream (the sync, redistribution, validation, checkpoints) and
    against each other (the shared training stream's epoch order). 2 epochs of 5 steps, 3 learners."""
    tests = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", SANITIZED_RUN, str(tests), str(tmp_path / "run")],
                          env={**os.environ, "TORCH_CUDA_SANITIZER": "1", "PYTHONPATH": str(tests.parent)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-3000:]
