"""Which CNN width fits the converged CPU study: seconds per generalist-d step at several SmallCNN widths.

What it measures: on one thread, the median wall time of one Linf PGD-5 training step (5 attack steps in
eval mode, then one SGD step in train mode) and of one natural SGD step, batch 128 of random CIFAR-shaped
inputs, for each width; and what those make for a 30-epoch generalist-d run on 47,500 training images
(one natural + one Linf learner, taking turns on one core), without validation. The PGD loop is written out
here (sign step, clamp to eps) rather than taken from generalist.attacks: the cost is in the model's
forward and backward passes, which are the same.

    python benchmarks/accuracy/width_scan.py                  # the widths the -cpu recipes chose from
    python benchmarks/accuracy/width_scan.py --widths 24,48,96 40,80,160
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from generalist.models.small_cnn import SmallCNN  # noqa: E402


def step_seconds(widths: tuple[int, ...], repeats: int) -> tuple[int, float, float]:
    """(parameters, median s per PGD-5 training step, median s per natural step)."""
    x, y = torch.rand(128, 3, 32, 32), torch.randint(0, 10, (128,))
    model = SmallCNN(num_classes=10, in_channels=3, mean=[0.5] * 3, std=[0.25] * 3, widths=widths)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy

    def adversarial() -> None:
        delta = torch.zeros_like(x, requires_grad=True)
        model.eval()
        for _ in range(5):
            grad, = torch.autograd.grad(loss(model(x + delta), y), delta)
            delta = (delta + 0.01 * grad.sign()).clamp(-8 / 255, 8 / 255).detach().requires_grad_(True)
        model.train()
        opt.zero_grad()
        loss(model(x + delta.detach()), y).backward()
        opt.step()

    def natural() -> None:
        model.train()
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()

    for _ in range(3):
        adversarial()
    adv, nat = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        adversarial()
        adv.append(time.perf_counter() - start)
        start = time.perf_counter()
        natural()
        nat.append(time.perf_counter() - start)
    return sum(p.numel() for p in model.parameters()), statistics.median(adv), statistics.median(nat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="+", default=["24,48,96", "32,64,128", "40,80,160", "48,96,192"])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=47500)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = args.train_images / 128
    print(f"# generalist-d cost per width: 1 thread, batch 128, {args.repeats} timed steps after 3, torch "
          f"{torch.__version__}")
    print("| widths | parameters | PGD-5 step ms | natural step ms | epoch s | 30 epochs min |")
    print("|---|---|---|---|---|---|")
    for text in args.widths:
        widths = tuple(int(w) for w in text.split(","))
        params, adv, nat = step_seconds(widths, args.repeats)
        epoch = steps * (adv + nat)
        print(f"| {text} | {params:,} | {1000 * adv:.0f} | {1000 * nat:.0f} | {epoch:.0f} | "
              f"{args.epochs * epoch / 60:.1f} |", flush=True)


if __name__ == "__main__":
    main()
