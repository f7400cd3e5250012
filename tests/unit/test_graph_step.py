"""runtime.cuda_graph (generalist.graph_step): where the recorded step applies; that on a CPU, where it never
does, asking for it changes no number; and GraphedStep's own logic on a fake CUDA graph. The real graph needs a
GPU: tests/gpu/test_gpu_training.py."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_same_tensors, final_global, tiny_config
from generalist.config import apply_overrides
from generalist.distributed import train
from generalist.graph_step import use_graph

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize("recipe, overrides, device, expected", [
    ("pgd-at-small", ["runtime.cuda_graph=true"], CUDA, True),
    ("natural-small", ["runtime.cuda_graph=true"], CUDA, True),
    ("pgd-at-small", [], CUDA, False),  # off unless asked for
    ("pgd-at-small", ["runtime.cuda_graph=true"], CPU, False),  # a CPU has no graphs: the eager step
    ("trades-small", ["runtime.cuda_graph=true"], CUDA, False),  # an objective not checked under capture
    ("pgd-at-small", ["runtime.cuda_graph=true", "runtime.compile=true"], CUDA, False),  # compile graphs its own
    ("pgd-at-small", ["runtime.cuda_graph=true", "runtime.deterministic=true"], CUDA, False),  # bit-exact: eager
])
def test_the_graph_step_applies_only_where_it_can(recipe, overrides, device, expected):
    config = apply_overrides(tiny_config(recipe), overrides)
    assert use_graph(config.runtime, config.learners[0], device) is expected


def test_on_a_cpu_asking_for_the_graph_step_changes_no_number(tmp_path):
    train(tiny_config("generalist-d-small", "runtime.backend=local"), tmp_path / "eager", quiet=True)
    train(tiny_config("generalist-d-small", "runtime.backend=local", "runtime.cuda_graph=true"), tmp_path / "asked",
          quiet=True)
    assert_same_tensors(final_global(tmp_path / "eager"), final_global(tmp_path / "asked"))


class FakeGraph:
    """A CUDA graph for a CPU: capture records the step and its learning rates instead of running it (the state is
    put back as it was), replay runs the recorded step again on the static inputs with those rates, writing into
    the captured outputs. So a stale batch, a stale learning rate or a missed capture shows in the numbers."""

    captured_while: list["FakeGraph"] = []

    def __init__(self):
        self.generators = []

    def register_generator_state(self, generator):
        self.generators.append(generator)

    def pool(self):
        return id(self)

    def replay(self):
        saved = [g["lr"] for g in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, self.lrs):
            group["lr"] = lr
        loss, logits = self.step(*self.inputs)
        for group, lr in zip(self.optimizer.param_groups, saved):
            group["lr"] = lr
        self.outputs[0].copy_(loss.detach())
        self.outputs[1].copy_(logits.detach())


class FakeCapture:
    """torch.cuda.graph(graph, pool=...): what runs inside is recorded, not applied."""

    def __init__(self, graph, pool=None, capture_error_mode="global"):
        self.graph = graph

    def __enter__(self):
        import copy

        self.learner = FakeCapture.learner
        learner = self.learner
        self.saved = (copy.deepcopy(learner.model.state_dict()), copy.deepcopy(learner.optimizer.state_dict()),
                      learner.generator.get_state())

    def __exit__(self, *exc):
        if exc[0] is not None:
            return False  # the step raised inside the capture: let it show
        model, optimizer, generator = self.saved
        self.learner.model.load_state_dict(model)
        self.learner.optimizer.load_state_dict(optimizer)
        self.learner.generator.set_state(generator)
        step = self.learner.train_step
        self.graph.step, self.graph.optimizer = step.eager_step, step.optimizer
        self.graph.inputs = (step.static_x, step.static_y)
        self.graph.lrs = [g["lr"] for g in step.optimizer.param_groups]
        self.graph.outputs = (step.static_loss, step.static_logits)
        return False


def test_the_graph_steps_dispatch_on_a_fake_cuda_gives_the_eager_numbers(monkeypatch):
    """GraphedStep's own logic, which a CPU can otherwise not run: warm-up, capture, replay on the static inputs, a
    new capture when the learning rate changes (epoch 2 of the tiny schedule has a tenth of epoch 1's), and an eager
    step for a batch of another shape. With a fake graph that replays the recorded eager step, every round must give
    the eager learner's loss, bit for bit."""
    import contextlib

    from generalist.graph_step import GraphedStep
    from generalist.learner import Learner
    from generalist.training import prepare_run_data

    class FakeStream:
        def __init__(self, device=None):
            pass

        def wait_stream(self, other):
            pass

    for name, value in {"Stream": FakeStream, "current_stream": lambda: FakeStream(),
                        "stream": lambda s: contextlib.nullcontext(), "device": lambda d: contextlib.nullcontext(),
                        "CUDAGraph": FakeGraph, "graph": FakeCapture}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    config = tiny_config("pgd-at-small")
    data = prepare_run_data(config)
    eager, graphed = (Learner(config, 0, data.initial_state, data.stream, data.model_kwargs, CPU) for _ in range(2))
    graphed.train_step = GraphedStep(graphed._eager_step, graphed.optimizer, graphed.generator, graphed.name)
    FakeCapture.learner = graphed
    rounds = [(1, 0, 6), (1, 6, 4), (2, 0, 6)]
    assert [graphed.run_steps(*r).loss for r in rounds] == [eager.run_steps(*r).loss for r in rounds]
    assert graphed.train_step.captures == 2 and not graphed.train_step.failed

    # A short batch: an eager step, and the graph is kept for the usual shape, in both learners alike.
    x, y = data.stream.batch(1, 6)
    assert graphed.train_step(x[:5], y[:5])[0] == eager.train_step(x[:5], y[:5])[0]
    assert graphed.train_step.captures == 2
    assert graphed.run_steps(2, 6, 3).loss == eager.run_steps(2, 6, 3).loss
