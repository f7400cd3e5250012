"""The training loop's quick validation (generalist/evaluation/validation.py): with `union`, the points right clean
and under every attack, counted point by point, while each threat's number and the generator's use stay the same."""

from __future__ import annotations

import torch
from torch import nn

from generalist.attacks import pgd
from generalist.config import AttackConfig
from generalist.data import TensorData
from generalist.evaluation.validation import clean_and_pgd_accuracy
from generalist.threat import get_threat

# A linear model whose class-0 region is cut by a sparse boundary (x[0] = 0.6) and a dense one (mean of x = 0.6):
# Linf eps 0.05 moves x[0] by 0.05 and the mean by 0.05, L2 eps 0.1 moves x[0] by 0.1 and the mean by only
# 0.1 / sqrt(48) = 0.014. So points 0.075 from the sparse boundary fall to L2 only, points 0.03 from the dense
# one to Linf only: the two attacks break different points, and the union is smaller than either.
ATTACKS = [AttackConfig(norm="Linf", eps=0.05, step_size=0.025, steps=3),
           AttackConfig(norm="L2", eps=0.1, step_size=0.05, steps=3)]


def model_and_data() -> tuple[nn.Module, TensorData]:
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    with torch.no_grad():
        weight, bias = model[1].weight, model[1].bias
        weight.zero_()
        weight[1, 0] = 1.0  # class 1: x[0] - 0.6
        weight[2, :] = 1.0 / 48  # class 2: mean(x) - 0.6
        bias.copy_(torch.tensor([0.0, -0.6, -0.6]))
    near_sparse = torch.full((48,), 0.2)
    near_sparse[0] = 0.525
    near_dense = torch.full((48,), (0.57 * 48 - 0.2) / 47)
    near_dense[0] = 0.2
    far = torch.full((48,), 0.2)
    x = torch.stack([near_sparse] * 10 + [near_dense] * 10 + [far] * 20).mul(255).round().to(torch.uint8)
    y = torch.zeros(40, dtype=torch.long)
    y[-4:] = 1  # four far points labelled wrong: wrong clean, so in no robust count
    return model, TensorData(x.view(40, 3, 4, 4), y)


def score(model, data, union: bool) -> dict[str, float]:
    return clean_and_pgd_accuracy(model, data, ATTACKS, pgd_steps=3, batch_size=16,
                                  generator=torch.Generator().manual_seed(5), device=torch.device("cpu"), union=union)


def test_the_union_is_counted_point_by_point_and_changes_nothing_else():
    model, data = model_and_data()
    with_union, without = score(model, data, union=True), score(model, data, union=False)
    assert {k: v for k, v in with_union.items() if k != "pgd_acc_union"} == without
    # The same attacks, point by point, in the validation's order (clean, then each threat, batch by batch).
    generator, right = torch.Generator().manual_seed(5), []
    for start in range(0, 40, 16):
        x, y = data.x[start:start + 16].float() / 255, data.y[start:start + 16]
        ok = model(x).argmax(1) == y
        for attack in ATTACKS:
            x_adv = pgd(model, x, y, get_threat(attack.norm, attack.eps), steps=3, step_size=attack.step_size,
                        random_start=True, generator=generator)
            ok &= model(x_adv).argmax(1) == y
        right.append(ok)
    expected = torch.cat(right).sum().item() / 40
    assert with_union["pgd_acc_union"] == expected
    # Each attack breaks its own ten points, so a union taken as the smaller per-threat number would fail here.
    assert with_union == {"clean_acc": 0.9, "pgd_acc_Linf": 0.65, "pgd_acc_L2": 0.65, "pgd_acc_union": 0.4}
