"""Model registry: name -> factory; every model maps x in [0, 1] to logits, Normalize first.

Contract every registered model keeps (tests/unit/test_models.py checks it):

- input x: (B, in_channels, H, W) in [0, 1], any H = W >= 28 (CIFAR 32, MNIST 28);
  output: logits (B, num_classes), not probabilities.
- `model.normalize` is a `Normalize` module, it is the model's first child
  (`next(model.children()) is model.normalize`) and the first thing `forward` applies.
- mean / std are non-persistent buffers, so they are not in `state_dict()`: averaging or
  interpolating state dicts never touches them.
- construction draws only from the global torch RNG (the caller seeds it), so two builds after the
  same `torch.manual_seed` are identical.
"""

from __future__ import annotations

import difflib
import math
from typing import Callable, Sequence

from torch import nn

from generalist.errors import ConfigError
from generalist.models.normalize import Normalize
from generalist.models.resnet import preact_resnet18, resnet18
from generalist.models.small_cnn import SmallCNN
from generalist.models.wide_resnet import wrn_28_10, wrn_34_10

__all__ = ["MODEL_NAMES", "Normalize", "build_model"]


def small_cnn_wide(**kwargs) -> nn.Module:
    """SmallCNN at (40, 80, 160) channels, 147k parameters: the widest for which a 30-epoch generalist-d run on
    the full CIFAR-10 training split fits in about 45 minutes of one CPU core (the `-cpu` recipes;
    benchmarks/results/accuracy/converged/README.md has the measurement)."""
    return SmallCNN(widths=(40, 80, 160), **kwargs)


_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "small-cnn": SmallCNN,
    "small-cnn-wide": small_cnn_wide,
    "resnet18": resnet18,
    "preact-resnet18": preact_resnet18,
    "wrn-28-10": wrn_28_10,
    "wrn-34-10": wrn_34_10,
}

MODEL_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def build_model(
    name: str, *, num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float]
) -> nn.Module:
    """Build a freshly initialised model by registry name (see MODEL_NAMES).

    num_classes: number of logits; in_channels: 3 for CIFAR, 1 for MNIST; mean / std: one value
    per input channel, applied as (x - mean) / std by the model's first layer.
    Initialisation draws from the global torch RNG; seed it before calling for a reproducible model.
    """
    if name not in _FACTORIES:
        close = difflib.get_close_matches(str(name), MODEL_NAMES, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(f"unknown model {name!r}; {hint}valid names: {', '.join(MODEL_NAMES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be an int >= 1 (e.g. 10 for CIFAR-10), got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be an int >= 1 (3 for CIFAR, 1 for MNIST), got {in_channels!r}")
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError(
            f"mean and std need one value per input channel (in_channels={in_channels}), "
            f"got mean={mean}, std={std}"
        )
    if not all(math.isfinite(s) and s > 0 for s in std):
        raise ConfigError(f"every std must be finite and > 0, got std={std}")
    return _FACTORIES[name](num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
