"""One base learner: model, SGD, lr schedule, objective and its own EMA. Knows nothing of Ray."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch

from generalist.bn_stats import batchnorm_buffer_names
from generalist.config import RunConfig
from generalist.data import TrainStream, derive_seed
from generalist.errors import TrainingDiverged
from generalist.graph_step import GraphedStep, use_graph
from generalist.mixing import StateDict, clock_tick, clone_state, ema_decay, ema_max_decay, lr_factor
from generalist.models import build_model
from generalist.objectives import objective_loss
from generalist.packed_state import StateLayout
from generalist.performance import autocast_for, channels_last_for, compiled, model_for_device
from generalist.records import RoundStats


def build_initial_state(config: RunConfig, num_classes: int, in_channels: int,
                        mean: tuple[float, ...], std: tuple[float, ...]) -> StateDict:
    """The one initialisation every learner of a run starts from (the reference copies theta_AT)."""
    cpu_rng = torch.get_rng_state()
    torch.manual_seed(derive_seed(config.seed, 0))  # seed stream 0: model init
    try:
        model = build_model(config.model.name, num_classes=num_classes, in_channels=in_channels,
                            mean=mean, std=std)
    finally:
        torch.set_rng_state(cpu_rng)
    return clone_state(model.state_dict())


class Learner:
    """model + optimiser + objective + EMA of one base learner.

    `run_steps` trains on the batches the shared `TrainStream` yields for (epoch, step), so every learner of
    a run, in this process or another, sees the same augmented batch at the same step."""

    def __init__(self, config: RunConfig, index: int, initial_state: StateDict, stream: TrainStream,
                 model_kwargs: dict, device: torch.device):
        self.config = config
        self.index = index
        self.spec = config.learners[index]
        self.stream = stream
        self.device = device
        self.model = build_model(config.model.name, **model_kwargs).to(device)
        # Speed settings of the step (generalist.performance); identities with the fp32 CPU defaults.
        self.memory_format = channels_last_for(config.runtime, device)
        self.model = model_for_device(self.model, self.memory_format)
        graphed = use_graph(config.runtime, self.spec, device)
        # A captured step must not keep autocast's cache of casted weights (the PyTorch docs on graphs and AMP).
        self.autocast = autocast_for(config.runtime, device, cache_enabled=not graphed)
        self.forward_model = compiled(self.model, config.runtime.compile)
        if config.runtime.use_data_on_device(device.type):
            stream.hold_on(device)
        self.model.load_state_dict(initial_state)
        self.model.train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.spec.lr, momentum=self.spec.momentum,
                                         weight_decay=self.spec.weight_decay, nesterov=self.spec.nesterov)
        # The EMA lives in one packed buffer (a sync sends it as one message) and has a spare: the first
        # update of a round writes into the spare, so the buffer a round ended with stays untouched through
        # the next round while a collective reads it (no snapshot copy per sync).
        live = self.model.state_dict()
        # Views of the live parameters and buffers, in state_dict order; load_state_dict copies into them in
        # place, so they stay valid (no state_dict() per round).
        self._live_floats = [t for t in live.values() if t.is_floating_point()]
        self._live_integers = [t for t in live.values() if not t.is_floating_point()]
        self.ema_layout = StateLayout(live)
        self._ema_buffers = [self.ema_layout.pack(live), self.ema_layout.pack(live)]
        self._ema_views = [self.ema_layout.views(b) for b in self._ema_buffers]
        self._ema_floats = [[v for v in views.values() if v.is_floating_point()] for views in self._ema_views]
        self._ema_integers = [[v for v in views.values() if not v.is_floating_point()] for views in self._ema_views]
        self._ema_current = 0
        self.ema_steps = 0
        self.max_decay = ema_max_decay(config, stream.steps_per_epoch)
        # Under mixing.global_bn=reestimate a learner keeps its own BatchNorm statistics at redistribution:
        # they describe its own inputs (clean or adversarial) through the weights it trains, which the
        # interpolated statistics of the global learner do not (generalist.bn_stats).
        self.kept_at_redistribution = (batchnorm_buffer_names(self.model)
                                       if config.mixing.global_bn == "reestimate" else frozenset())
        self.steps_done = 0
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(derive_seed(config.seed, 1, index))  # seed stream 1: attacks, per learner
        # runtime.cuda_graph: the step recorded once and replayed (generalist.graph_step); else the eager step.
        self.train_step = self._graphed_step() if graphed else self._eager_step
        # runtime.learner_streams: the learner's rounds run on a CUDA stream of its own, so that learners sharing a
        # GPU in one process overlap on it (run_round); None elsewhere, where the current stream is all there is.
        self.cuda_stream = (torch.cuda.Stream(device=device)
                            if device.type == "cuda" and config.runtime.learner_streams else None)

    @property
    def name(self) -> str:
        return self.spec.name

    def run_steps(self, epoch: int, first_step: int, n: int) -> RoundStats:
        """Train n optimiser steps of 1-based `epoch`, starting at `first_step` of that epoch."""
        return self.launch_steps(epoch, first_step, n).result()

    def launch_steps(self, epoch: int, first_step: int, n: int) -> LaunchedRound:
        """Queue the round's n steps on the device without waiting for them (on a CPU: run them) and return the
        round, whose `result()` waits for it, checks it and gives its RoundStats. Between the two, other learners
        of this process can queue theirs (run_round): on a GPU, on their own streams, their kernels overlap."""
        start = time.perf_counter()
        # The round's clock epoch (generalist.mixing.clock_tick): rounds never span two (training.plan_epoch).
        tick = clock_tick(self.config, (epoch - 1) * self.stream.steps_per_epoch + first_step,
                          self.stream.steps_per_epoch)
        lr = self.spec.lr * lr_factor(tick, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self._own_stream():
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            images = 0
            live_floats, live_integers = self._live_floats, self._live_integers
            first_update_of_round = True
            for step in range(first_step, first_step + n):
                x, y = self.stream.batch(epoch - 1, step, self.device)
                x = x.contiguous(memory_format=self.memory_format)  # a no-op for the default format
                loss, logits = self.train_step(x, y)
                decay = ema_decay(self.ema_steps, self.max_decay)
                self._update_ema(live_floats, live_integers, decay, into_spare=first_update_of_round)
                first_update_of_round = False
                self.ema_steps += 1
                self.steps_done += 1
                loss_sum += loss.detach()
                correct += (logits.detach().argmax(1) == y).sum()
                images += len(y)
        return LaunchedRound(self, epoch, first_step, n, tick, lr, time.perf_counter() - start, loss_sum, correct,
                             images)

    def _finish(self, launched: LaunchedRound) -> RoundStats:
        """The round's one host sync: wait for its steps, check that they stayed finite, report."""
        start = time.perf_counter()
        with self._own_stream():
            # The loss of a step is computed before its update, so a finite loss can leave non-finite weights or
            # BN statistics behind; check the state too, in the same host sync, before it can be checkpointed.
            # The packed EMA holds (1 - d) * every live float of the last step, 1 - d > 0: it is finite exactly
            # when they all were (or had been), so one kernel over one buffer checks them all.
            finite = self.ema_layout.floats(self._ema_buffers[self._ema_current]).isfinite().all()
            # One copy to the host for all three (the count is exact as a float: a round is at most an epoch).
            loss_total, finite, correct = torch.stack([launched.loss_sum, finite.to(launched.loss_sum.dtype),
                                                       launched.correct.to(launched.loss_sum.dtype)]).tolist()
        if self.cuda_stream is not None:  # what follows on the current stream (the sync, a checkpoint) sees it
            torch.cuda.current_stream(self.device).wait_stream(self.cuda_stream)
        epoch, first_step, n = launched.epoch, launched.first_step, launched.n
        mean_loss = loss_total / n
        if not (math.isfinite(mean_loss) and finite):
            what = f"training loss is {mean_loss}" if not math.isfinite(mean_loss) else \
                "weights or BatchNorm statistics became non-finite"
            raise TrainingDiverged(
                f"learner {self.name!r}: {what} at epoch {epoch}, steps "
                f"{first_step}..{first_step + n - 1}; lower learners.{self.name}.lr (now {self.spec.lr}). "
                "The last good checkpoint was kept.")
        # The round's seconds are its own launch and its own wait, not the other learners' launches in between
        # (on a CPU, where launching is training, they are this learner's steps alone, as before run_round).
        seconds = launched.launch_seconds + time.perf_counter() - start
        return RoundStats(self.name, epoch, self.steps_done, mean_loss, correct / launched.images, launched.lr,
                          seconds, launched.images, launched.tick)

    @contextlib.contextmanager
    def _own_stream(self):
        """The learner's CUDA stream made current, after the work already queued on the current stream (a
        redistribution, a resume, the sync's reads); a no-op without one."""
        if self.cuda_stream is None:
            yield
            return
        with torch.cuda.device(self.device):
            self.cuda_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.cuda_stream):
                yield

    def _eager_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on the batch (x, y): the objective's loss and the logits it was computed on."""
        with self.autocast():  # the attack's and the training's forward passes (backward follows their dtypes)
            loss, logits = objective_loss(self.forward_model, x, y, self.spec, self.generator, self.steps_done)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, logits

    def _graphed_step(self) -> GraphedStep:
        return GraphedStep(self._eager_step, self.optimizer, self.generator, self.name)

    @torch.no_grad()
    def _update_ema(self, live_floats: list[torch.Tensor], live_integers: list[torch.Tensor], decay: float,
                    into_spare: bool) -> None:
        """ema <- decay * ema + (1 - decay) * live; integer buffers take live's. A few multi-tensor kernels
        over the packed buffer, element for element the per-tensor `s.mul_(d); s.add_(v * (1 - d))`."""
        source = self.ema_layout.floats(self._ema_buffers[self._ema_current])
        if into_spare:
            self._ema_current ^= 1
            torch.mul(source, decay, out=self.ema_layout.floats(self._ema_buffers[self._ema_current]))
        else:
            source.mul_(decay)
        torch._foreach_add_(self._ema_floats[self._ema_current], torch._foreach_mul(live_floats, 1 - decay))
        for shadow, value in zip(self._ema_integers[self._ema_current], live_integers):
            shadow.copy_(value)

    @property
    def ema(self) -> StateDict:
        """The learner's EMA as a state dict (views into its current packed buffer)."""
        return self._ema_views[self._ema_current]

    @property
    def ema_buffer(self) -> torch.Tensor:
        """The packed EMA buffer the last round ended with; left untouched until the end of the next round."""
        return self._ema_buffers[self._ema_current]

    @torch.no_grad()
    def load_global_(self, state: StateDict) -> None:
        """Redistribution: copy the global weights and buffers into this learner's live model in place.
        The optimiser's momentum and the learner's own EMA are kept, as in the reference; under
        mixing.global_bn=reestimate so are its BatchNorm statistics."""
        for name, tensor in self.model.state_dict().items():
            if name not in self.kept_at_redistribution:
                tensor.copy_(state[name])

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema,
            "ema_steps": self.ema_steps,
            "steps_done": self.steps_done,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        with torch.no_grad():
            for name, tensor in self.ema.items():
                tensor.copy_(saved["ema"][name])
        self.ema_steps = int(saved["ema_steps"])
        self.steps_done = int(saved["steps_done"])
        self.generator.set_state(saved["generator"].cpu() if hasattr(saved["generator"], "cpu") else saved["generator"])
        if isinstance(self.train_step, GraphedStep):  # its graph reads the momentum buffers just replaced
            self.train_step = self._graphed_step()


@dataclass
class LaunchedRound:
    """A learner's round whose steps are queued (Learner.launch_steps); `result()` waits for it and reports."""
    learner: Learner
    epoch: int
    first_step: int
    n: int
    tick: int
    lr: float
    launch_seconds: float
    loss_sum: torch.Tensor
    correct: torch.Tensor
    images: int

    def result(self) -> RoundStats:
        return self.learner._finish(self)


def run_round(learners: list[Learner], epoch: int, first_step: int, n: int) -> list[RoundStats]:
    """One round of every learner of this process, side by side: all rounds are queued before any is waited for.

    On a GPU with runtime.learner_streams each learner queues on its own stream, so the kernels of learners that
    share the device overlap where one learner's leave it idle (at batch 128 on 32x32 images most do); with CUDA graphs
    (runtime.cuda_graph) a step is one launch, and the host queues every learner's round before the first ends. On
    a CPU the rounds run one after another at launch, as before. Either way each learner's numbers are its own:
    learners share only the read-only training stream, whose epoch order is on the device before the first of
    them returns from its first batch (a host-to-device copy from pageable memory waits for the device)."""
    launched = [learner.launch_steps(epoch, first_step, n) for learner in learners]
    return [round_.result() for round_ in launched]
