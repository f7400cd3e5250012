"""SmallCNN: a BatchNorm CNN small enough to adversarially train on one CPU core."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from generalist.models.normalize import Normalize


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    # bias=False: the BatchNorm shift makes a conv bias redundant.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Three stride-2 conv-BN-ReLU blocks (24, 48, 96 channels), global average pool, linear.

    About 54k parameters for CIFAR-10. Every conv has stride 2 because on CPU the cost is
    dominated by memory traffic of full-resolution activations: a stride-1 stem halves the
    throughput (measured ~2.3k vs ~4.5k CIFAR images/s forward+backward on one core, batch 128).
    Global pooling makes any H, W work, so CIFAR (32x32) and MNIST (28x28) share one model.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        widths: Sequence[int] = (24, 48, 96),
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        channels = [in_channels, *widths]
        self.features = nn.Sequential(*[_conv_bn_relu(a, b) for a, b in zip(channels[:-1], channels[1:])])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W) in [0, 1] -> logits (B, num_classes)."""
        return self.fc(torch.flatten(self.pool(self.features(self.normalize(x))), 1))
