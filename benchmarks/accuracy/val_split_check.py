"""Is a run's validation split harder than the rest of the held-out training data? Chance or defect.

What it measures: for the validation split a run of seed S draws (the exact indices training takes,
`generalist.data.split_indices` with `generalist.training.validation_split_seed`), the clean accuracy of some
classifiers on it, against their accuracy on the training images the run never saw (held out but not in
val), and against R random subsets of those unused images of the same size as val. A split drawn at
random scores like a random subset: its z-score (how many standard deviations of the subsets' accuracy
it sits from their mean) is an ordinary draw from N(0, 1), and its rank among the subsets is uniform.

With --other-seeds N, each model also scores the validation splits of seeds 0..N-1 (the points of each that
the model did not train on): the spread of those z-scores says how rare the split of the run's own seed is
among splits drawn the same way.

Classifiers: 1-nearest-neighbour on raw pixels with the run's training images as reference (knows
nothing of the models, so a low score there is about the images), and the global learner of each run
folder given with --run.

    python benchmarks/accuracy/val_split_check.py --seeds 0 1 2 3 --run runs/valcheck/pgd-at-seed0 --other-seeds 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from generalist.config import load_run_config  # noqa: E402
from generalist.data import load_split, resolve_data_root, split_indices  # noqa: E402
from generalist.evaluation.model_loading import load_model  # noqa: E402
from generalist.training import validation_split_seed  # noqa: E402


def held_out(n: int, val_size: int, train_subset: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor]:
    """(train, val, unused) indices of the training split for a run of `seed`, as prepare_run_data takes them."""
    train, val = split_indices(n, val_size, validation_split_seed(seed))
    used = train if train_subset is None else train[:train_subset]
    return used, val, train[len(used):]


def nearest_neighbour_correct(x: torch.Tensor, y: torch.Tensor, reference: torch.Tensor,
                              queries: torch.Tensor) -> torch.Tensor:
    """Per query index: is the label of its nearest reference image (Euclidean, raw pixels) its own?"""
    ref = x[reference].flatten(1).float() / 255
    ref_sq = (ref * ref).sum(1)
    correct = torch.empty(len(queries), dtype=torch.bool)
    for start in range(0, len(queries), 2048):
        q = x[queries[start:start + 2048]].flatten(1).float() / 255
        distance = ref_sq[None, :] - 2 * q @ ref.T  # + |q|^2, the same for every reference image
        correct[start:start + 2048] = y[reference[distance.argmin(1)]] == y[queries[start:start + 2048]]
    return correct


@torch.no_grad()
def model_correct(run_dir: Path, x: torch.Tensor, y: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    model = load_model(run_dir).model
    out = torch.empty(len(queries), dtype=torch.bool)
    for start in range(0, len(queries), 500):
        index = queries[start:start + 500]
        out[start:start + 500] = model(x[index].float() / 255).argmax(1) == y[index]
    return out


def compare(correct: dict[int, bool], val: torch.Tensor, unused: torch.Tensor, subsets: int,
            generator: torch.Generator) -> dict:
    """Accuracy on val, on all unused points, and where val falls among random same-size unused subsets."""
    val_acc = torch.tensor([correct[i] for i in val.tolist()], dtype=torch.float).mean().item()
    unused_hits = torch.tensor([correct[i] for i in unused.tolist()], dtype=torch.float)
    draws = torch.stack([unused_hits[torch.randperm(len(unused), generator=generator)[:len(val)]].mean()
                         for _ in range(subsets)])
    return {"val": val_acc, "unused": unused_hits.mean().item(), "subset_mean": draws.mean().item(),
            "subset_std": draws.std().item(), "z": (val_acc - draws.mean().item()) / draws.std().item(),
            "rank": (draws < val_acc).float().mean().item()}


def other_splits(correct: torch.Tensor, trained_on: torch.Tensor, n: int, val_size: int, seeds: int) -> torch.Tensor:
    """z-scores of the val splits of seeds 0..seeds-1, each on its points outside the model's training set.

    correct: (n,) bool, the model's hit on every training-split image; trained_on: the indices it trained on."""
    held = torch.ones(n, dtype=torch.bool)
    held[trained_on] = False
    p = correct[held].float().mean()
    z = []
    for seed in range(seeds):
        val = split_indices(n, val_size, validation_split_seed(seed))[1]
        val = val[held[val]]
        z.append(((correct[val].float().mean() - p) / (p * (1 - p) / len(val)).sqrt()).item())
    return torch.tensor(z)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--train-subset", type=int, default=8000)
    parser.add_argument("--run", action="append", default=[], help="a run folder whose global learner to score "
                        "(its own seed's split; repeat for several)")
    parser.add_argument("--other-seeds", type=int, default=0, help="also score the val splits of this many "
                        "seeds with each --run model")
    parser.add_argument("--subsets", type=int, default=2000)
    parser.add_argument("--data", default=None, help="data folder (default: $GENERALIST_DATA)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_split("cifar10", resolve_data_root(args.data), train=True)
    x, y = data.x, data.y
    generator = torch.Generator().manual_seed(0)

    print(f"# validation split check: CIFAR-10 training split, val {args.val_size}, train subset "
          f"{args.train_subset}, {args.subsets} random unused subsets of {args.val_size}")
    print("| classifier | seed | val | unused | random subsets: mean ± std | z of val | rank of val |")
    print("|---|---|---|---|---|---|---|")
    runs = {}
    for run in args.run:
        config = load_run_config(Path(run))
        runs.setdefault(config.seed, []).append((Path(run), config))
    for seed in args.seeds:
        train, val, unused = held_out(len(y), args.val_size, args.train_subset, seed)
        queries = torch.cat([val, unused])
        scorers = [("1-NN raw pixels", lambda: nearest_neighbour_correct(x, y, train, queries))]
        for run_dir, config in runs.get(seed, []):
            assert (config.data.val_size, config.data.train_subset) == (args.val_size, args.train_subset), run_dir
            scorers.append((f"{config.recipe} global", lambda r=run_dir: model_correct(r, x, y, queries)))
        for name, score in scorers:
            correct = dict(zip(queries.tolist(), score().tolist()))
            r = compare(correct, val, unused, args.subsets, generator)
            print(f"| {name} | {seed} | {100 * r['val']:.1f} | {100 * r['unused']:.1f} | "
                  f"{100 * r['subset_mean']:.1f} ± {100 * r['subset_std']:.1f} | {r['z']:+.2f} | {r['rank']:.3f} |",
                  flush=True)
    if args.other_seeds:
        print(f"\n# each model on the val splits of seeds 0..{args.other_seeds - 1} (points it did not train on): "
              "z against its accuracy on all such points (binomial standard error)")
        print("| model | its seed | z of its own split | z over the other splits: mean ± std | min (seed) | "
              "splits with z < -3 |")
        print("|---|---|---|---|---|---|")
        for seed, models in sorted(runs.items()):
            train = held_out(len(y), args.val_size, args.train_subset, seed)[0]
            for run_dir, config in models:
                z = other_splits(model_correct(run_dir, x, y, torch.arange(len(y))), train, len(y), args.val_size,
                                 args.other_seeds)
                print(f"| {config.recipe} global | {seed} | {z[seed]:+.2f} | {z.mean():+.2f} ± {z.std():.2f} | "
                      f"{z.min():+.2f} ({z.argmin().item()}) | {(z < -3).sum().item()} |", flush=True)


if __name__ == "__main__":
    main()
