"""A learner's training step as one CUDA graph: the attack, the training pass and the SGD update in one launch.

At batch 128 on 32x32 images a PGD-10 step issues about 2,000 kernels, most of them short, one by one from Python:
on an H100 the step takes 86.5 ms where its arithmetic needs a few (benchmarks/results/gpu/). A CUDA graph records
the step once, the attack's forward and input-gradient passes, the training forward and backward and the
optimiser's update, and replays it with one launch (torch.cuda.graphs; the "whole-network capture" of the
PyTorch docs). What the graph reads lives at fixed addresses: the batch is copied into static buffers, the
weights, BatchNorm buffers and momentum buffers are updated in place, and the attack's generator is registered
with the graph, so each replay draws new random starts from it.

What a graph cannot follow runs eagerly around it:
- the learning rate is a number inside SGD's update, so a new rate is a new capture (the rate changes once per
  clock epoch at most: about 80 captures in a run of 120 clock epochs, each the cost of a step or two);
- the EMA stays eager (a few multi-tensor kernels): its double buffer alternates between rounds;
- the first WARMUP_STEPS steps run eagerly on a side stream (lazy initialisation, momentum buffers), as the
  PyTorch docs ask before a capture;
- a batch of another shape (the last one of an epoch when it is short) runs eagerly.

Only objectives without data-dependent Python control flow are captured (`capturable`): plain cross-entropy on
clean or PGD points. Others, and any failure to capture, run the eager step (a failure says so once). On a CPU
the eager step is all there is. The replayed kernels are the eager step's, so the numbers match it to rounding
(checked on a GPU by tests/gpu/test_gpu_training.py); bit-exact runs (runtime.deterministic) keep the eager step.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

from generalist.config import LearnerConfig, RuntimeConfig

__all__ = ["GraphedStep", "capturable", "use_graph"]

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def capturable(spec: LearnerConfig) -> bool:
    """Whether this learner's step can be recorded once and replayed: cross-entropy on clean or PGD points (the
    Generalist learners and PGD-AT). The baselines' objectives (TRADES, MAX, AVG, MSD, E-AT) are not claimed: some
    choose per batch in Python, and none has been checked under capture."""
    return spec.objective == "ce"


def use_graph(runtime: RuntimeConfig, spec: LearnerConfig, device: torch.device) -> bool:
    """runtime.cuda_graph asked for, on a CUDA device, for a capturable objective, without torch.compile (whose
    reduce-overhead mode makes graphs of its own) and without bit-exact kernels."""
    return (runtime.cuda_graph and device.type == "cuda" and capturable(spec) and not runtime.compile
            and not runtime.use_deterministic(device.type))


class GraphedStep:
    """Calls like `eager_step(x, y) -> (loss, logits)`, the step it replaces, which must zero the gradients
    (set to None), compute the loss, run backward and step the optimiser. After WARMUP_STEPS eager calls it
    captures that step (again whenever the learning rate or the batch's shape changes) and replays it. The loss and
    logits it returns are the graph's static outputs: read them before the next call."""

    WARMUP_STEPS = 3

    def __init__(self, eager_step: Step, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                 name: str):
        self.eager_step = eager_step
        self.optimizer = optimizer
        self.generator = generator
        self.name = name
        # The learner's device (its generator's), made current around every call: streams, captures and replays
        # belong to the current device, and in one process learners may train on different GPUs.
        self.device = generator.device
        self.warmup_left = self.WARMUP_STEPS
        self.side_stream = torch.cuda.Stream(device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None
        self.failed = False
        self.captures = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.cuda.device(self.device):
            return self._step(x, y)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.failed:
            return self.eager_step(x, y)
        if self.warmup_left > 0:
            self.warmup_left -= 1
            return self._on_side_stream(x, y)
        key = (x.shape, x.stride(), x.dtype, y.shape, tuple(g["lr"] for g in self.optimizer.param_groups))
        if key != self.key:
            if self.graph is not None and key[:4] != self.key[:4]:
                return self._on_side_stream(x, y)  # a batch of another shape: keep the graph for the usual one
            try:
                self._capture(x, y)
            except Exception as error:  # noqa: BLE001 - any failure leaves the eager step, which always works
                self.failed = True
                self.graph = None
                print(f"learner {self.name!r}: CUDA graph capture failed ({type(error).__name__}: "
                      f"{str(error).splitlines()[0] if str(error) else ''}); training on with the eager step",
                      file=sys.stderr, flush=True)
                return self.eager_step(x, y)
            self.key = key
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss, self.static_logits

    def _on_side_stream(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An eager step on the side stream, ordered after and before the current stream's work."""
        current = torch.cuda.current_stream()
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream):
            loss, logits = self.eager_step(x, y)
        current.wait_stream(self.side_stream)
        return loss, logits

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Record the step on fresh static inputs; nothing runs until the first replay. The old graph's memory
        pool is reused, so a new learning rate costs no new memory."""
        pool = self.graph.pool() if self.graph is not None else None
        # Filled before the capture as well as before each replay: what a capture reads is then always a real batch.
        self.static_x = x.clone()
        self.static_y = y.clone()
        # Gradients must be unset when the capture starts, so that the recorded backward writes them (at addresses
        # of the graph's pool) instead of accumulating into tensors outside it.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)  # each replay advances it, as the eager draws would
        # thread_local: the mixing's background thread (generalist.distributed.collective_sync) may be moving states
        # on its own stream meanwhile; the default "global" mode would fail its CUDA calls during the capture.
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            self.static_loss, self.static_logits = self.eager_step(self.static_x, self.static_y)
        self.graph = graph
        self.captures += 1
