"""Training really learns: short real runs on MNIST reach accuracy far from chance (10 %).

Local backend, one thread, small-cnn, 300 optimiser steps of batch 128 on 6,400 MNIST images without
augmentation (a horizontal flip turns digits into other shapes). The shipped model (final/global.pt) is then
checked on 500 points of the MNIST *test* split with our own PGD. About 50 s on 2 cores (natural ~25 s,
Linf-AT ~26 s; measured with other jobs on the machine).
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import find_test_data_root
from generalist.attacks import pgd
from generalist.checkpoint import load_state_dict_file
from generalist.config import apply_overrides
from generalist.data import TensorData, dataset_info, eval_batches, load_split
from generalist.distributed import train
from generalist.models import build_model
from generalist.recipes import get_recipe
from generalist.threat import get_threat

# Validation at the end only (every_epochs = epochs): the assertions read the final one.
MNIST = ["data.dataset=mnist", "data.augment=false", "data.train_subset=6400", "data.batch_size=128",
         "data.val_size=500", "eval.n_examples=500", "eval.every_epochs=6", "schedule.epochs=6",
         "runtime.backend=local", "runtime.threads_per_learner=1"]
# eps 0.3 is MNIST's usual Linf budget. Two PGD steps of eps/2 in training, a flatter lr schedule and a
# higher lr make robustness appear within 300 steps; evaluation runs PGD-10 from a random start.
LINF_AT = ["learners.linf.attack.eps=0.3", "learners.linf.attack.step_size=0.15", "learners.linf.attack.steps=2",
           "learners.linf.lr=0.1", "schedule.lr_factors=[1, 1, 1, 0.1]", "eval.pgd_steps=10"]


def mnist_config(recipe: str, *overrides: str):
    return apply_overrides(get_recipe(recipe), [*MNIST, f'data.root="{find_test_data_root()}"', *overrides])


def accuracy_on_test_split(state: dict, eps: float) -> tuple[float, float]:
    """Clean and PGD-20 (Linf eps, step eps/8, random start) accuracy of a small-cnn state on 500 MNIST test points."""
    info = dataset_info("mnist")
    model = build_model("small-cnn", num_classes=info.num_classes, in_channels=info.shape[0], mean=info.mean,
                        std=info.std)
    model.load_state_dict(state)
    model.eval()
    test = load_split("mnist", find_test_data_root(), train=False)
    points = TensorData(test.x[:500], test.y[:500])
    generator = torch.Generator().manual_seed(1234)
    clean = robust = 0
    for x, y in eval_batches(points, 250):
        with torch.no_grad():
            clean += (model(x).argmax(1) == y).sum().item()
        x_adv = pgd(model, x, y, get_threat("Linf", eps), steps=20, step_size=eps / 8, random_start=True,
                    generator=generator)
        assert (x_adv - x).abs().max() <= eps + 1e-6
        with torch.no_grad():
            robust += (model(x_adv).argmax(1) == y).sum().item()
    return clean / 500, robust / 500


@pytest.fixture(scope="module")
def natural_run(tmp_path_factory) -> dict:
    """A natural run and its shipped model's clean and PGD-20 (eps 0.3) accuracy on test points."""
    run = tmp_path_factory.mktemp("learns") / "natural"
    train(mnist_config("natural-small"), run, quiet=True)
    clean, robust = accuracy_on_test_split(load_state_dict_file(run / "final" / "global.pt"), eps=0.3)
    return {"run": run, "clean": clean, "robust": robust}


def test_natural_training_on_mnist_reaches_high_clean_accuracy(natural_run):
    summary = json.loads((natural_run["run"] / "final" / "summary.json").read_text())
    validation = summary["final_validation"]
    assert validation["natural"]["clean_acc"] > 0.85, validation
    assert validation["global"]["clean_acc"] > 0.85, validation
    assert natural_run["clean"] > 0.8, f"the shipped model has {natural_run['clean']:.1%} clean test accuracy"


def test_linf_adversarial_training_on_mnist_makes_the_model_robust(natural_run, tmp_path):
    run = tmp_path / "linf"
    train(mnist_config("pgd-at-small", *LINF_AT), run, quiet=True)

    validation = json.loads((run / "final" / "summary.json").read_text())["final_validation"]
    assert validation["global"]["pgd_acc_Linf"] > 0.2, validation
    clean, robust = accuracy_on_test_split(load_state_dict_file(run / "final" / "global.pt"), eps=0.3)
    natural_robust = natural_run["robust"]
    # Chance is 10 %; a naturally trained model is (almost) never right inside the eps = 0.3 ball.
    assert clean > 0.4, f"clean test accuracy {clean:.1%}"
    assert robust > 0.18, f"PGD-20 test accuracy at eps 0.3 is {robust:.1%}"
    assert robust > natural_robust + 0.15, f"AT {robust:.1%} vs natural {natural_robust:.1%} under PGD-20"
