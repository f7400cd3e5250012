"""Normalize layer: the first layer of every model, mapping x in [0, 1] to (x - mean) / std."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from generalist.errors import ConfigError


class Normalize(nn.Module):
    """Per-channel (x - mean) / std with constants that stay out of the state dict.

    mean and std are non-persistent buffers: they follow `.to(device)` but are not in
    `state_dict()`, so averaging or interpolating state dicts never touches them.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean = [float(m) for m in mean]
        std = [float(s) for s in std]
        if len(mean) != len(std) or not mean:
            raise ConfigError(
                f"mean and std need one value per input channel, got {len(mean)} means and "
                f"{len(std)} stds; e.g. mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)"
            )
        if not all(math.isfinite(s) and s > 0 for s in std) or not all(math.isfinite(m) for m in mean):
            raise ConfigError(f"std must be finite and > 0 and mean finite, got mean={mean}, std={std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> (B, C, H, W) normalized."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
