"""ResNet-18 and PreAct ResNet-18 in their CIFAR form: 3x3 stem, no max-pool, global average pool."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from generalist.models.normalize import Normalize


class BasicBlock(nn.Module):
    """Post-activation residual block (He et al. 2016a): conv-BN-ReLU-conv-BN, add, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016b): BN-ReLU-conv-BN-ReLU-conv, add."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection shortcut sees the pre-activated input, as in the reference implementation.
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class ResNet(nn.Module):
    """ResNet with four stages of 64/128/256/512 channels; `preact` selects PreAct blocks.

    The CIFAR stem (one 3x3 conv, stride 1, no max-pool) keeps 32x32 inputs at full resolution in
    the first stage; global average pooling lets 28x28 (MNIST) inputs through unchanged.
    """

    def __init__(
        self,
        *,
        blocks_per_stage: Sequence[int],
        preact: bool,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.preact = preact
        block = PreActBlock if preact else BasicBlock
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        # PreAct blocks normalize their own input, so the stem has no BN; post-activation needs one.
        self.bn1 = nn.Identity() if preact else nn.BatchNorm2d(64)
        stages = []
        c_in = 64
        for i, (c_out, n) in enumerate(zip((64, 128, 256, 512), blocks_per_stage)):
            layers = []
            for j in range(n):
                layers.append(block(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # PreAct blocks end on a conv, so a final BN-ReLU is needed before pooling.
        self.bn_final = nn.BatchNorm2d(512) if preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W) in [0, 1] -> logits (B, num_classes)."""
        out = self.conv1(self.normalize(x))
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.preact:
            out = F.relu(self.bn_final(out))
        return self.linear(torch.flatten(self.pool(out), 1))


def resnet18(*, num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float]) -> ResNet:
    """ResNet-18, CIFAR variant (about 11.2M parameters for 10 classes)."""
    return ResNet(
        blocks_per_stage=(2, 2, 2, 2), preact=False,
        num_classes=num_classes, in_channels=in_channels, mean=mean, std=std,
    )


def preact_resnet18(*, num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float]) -> ResNet:
    """PreAct ResNet-18 as used by Rice et al. 2020 and Wong et al. 2020 (about 11.2M parameters)."""
    return ResNet(
        blocks_per_stage=(2, 2, 2, 2), preact=True,
        num_classes=num_classes, in_channels=in_channels, mean=mean, std=std,
    )
