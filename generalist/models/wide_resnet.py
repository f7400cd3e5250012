"""WideResNet-depth-widen (Zagoruyko & Komodakis 2016), the CIFAR robustness benchmark backbone."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from generalist.errors import ConfigError
from generalist.models.normalize import Normalize


class WideBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, add."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # When the shape changes, the shortcut takes the pre-activated input (reference WRN code).
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = F.relu(self.bn2(self.conv1(out)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen: a 3x3 stem of 16 channels, three stages of 16k/32k/64k channels, global pool.

    depth = 6n + 4 with n blocks per stage. Global average pooling lets 28x28 inputs through.
    """

    def __init__(
        self,
        *,
        depth: int,
        widen: int,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ConfigError(f"WideResNet depth must be 6n + 4 with n >= 1 (e.g. 28 or 34), got {depth}")
        if widen < 1:
            raise ConfigError(f"WideResNet widen factor must be >= 1 (e.g. 10), got {widen}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        stages = []
        c_in = 16
        for i, c_out in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1, dropout=dropout))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(c_in)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        # Init of the reference WRN code (and of the TRADES / RobustBench copies of it).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W) in [0, 1] -> logits (B, num_classes)."""
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        out = F.relu(self.bn(out))
        return self.fc(torch.flatten(self.pool(out), 1))


def wrn_28_10(*, num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float]) -> WideResNet:
    """WRN-28-10 (about 36.5M parameters for 10 classes)."""
    return WideResNet(depth=28, widen=10, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)


def wrn_34_10(*, num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float]) -> WideResNet:
    """WRN-34-10 (about 46.2M parameters for 10 classes), the Madry / TRADES CIFAR-10 model."""
    return WideResNet(depth=34, widen=10, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
