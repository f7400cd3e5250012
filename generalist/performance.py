"""How a learner's step uses its device: bf16 autocast, channels-last memory format and torch.compile.

Each is a RuntimeConfig field whose effect on accuracy docs/performance.md states. With the defaults on CPU
(fp32, NCHW, no compile) every function here is the identity, so a CPU run is bit-identical to one made before
these settings existed.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
from torch import nn

from generalist.config import RuntimeConfig
from generalist.errors import ConfigError

__all__ = ["autocast_for", "channels_last_for", "compiled", "model_for_device"]


def autocast_for(runtime: RuntimeConfig, device: torch.device,
                 cache_enabled: bool = True) -> Callable[[], ContextManager]:
    """A factory of the context the attack's and the training's passes run in: bf16 autocast, or nothing.

    Under it matmuls and convolutions run in bf16 while parameters, gradients, the optimiser, the EMA and
    the attack's delta stay fp32 (autocast casts at each op's input; elementwise ops, the loss and the
    projection onto the threat's ball keep their fp32 inputs). bf16 has fp32's exponent range, so no loss
    scaling is needed. `cache_enabled=False` for a step recorded as a CUDA graph (generalist.graph_step)."""
    if runtime.precision == "fp32":
        return contextlib.nullcontext
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"runtime.precision=bf16 but {torch.cuda.get_device_name(device)} has no bf16 support "
                          "(it needs compute capability >= 8.0, e.g. A100, H100, RTX 30xx); use runtime.precision=fp32")
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)


def channels_last_for(runtime: RuntimeConfig, device: torch.device) -> torch.memory_format:
    """The memory format of the model's 4-d weights and of its inputs on `device`."""
    return torch.channels_last if runtime.use_channels_last(device.type) else torch.contiguous_format


def model_for_device(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """The model with its 4-d weights in `memory_format`, in place; untouched for the default format, so the
    fp32 CPU path keeps exactly the tensors it always had."""
    if memory_format is torch.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """What the step calls: `torch.compile(model)` or the model itself.

    The compiled wrapper shares the model's parameters and follows its train/eval switches, so the optimiser,
    the EMA and checkpoints keep using the plain module (whose state_dict keys carry no `_orig_mod.` prefix)."""
    return torch.compile(model) if enabled else model
