"""Per-example training and attack losses: cross-entropy and the TRADES KL term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cross_entropy", "trades_kl"]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits: (B, K), y: (B,) int64 in [0, K) -> (B,) per-example cross-entropy (nats)."""
    return F.cross_entropy(logits, y, reduction="none")


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """KL(softmax(clean) || softmax(adv)) per example, summed over classes (TRADES, Zhang et al. 2019).

    logits_adv, logits_clean: (B, K) -> (B,) >= 0. Gradients flow into both arguments, as in the
    TRADES training loss; detach logits_clean where it must act as a fixed target (the attack).
    """
    # log_target=True works in log space, so classes with ~0 clean probability give 0, not NaN.
    return F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.log_softmax(logits_clean, dim=1), reduction="none", log_target=True
    ).sum(dim=1)
