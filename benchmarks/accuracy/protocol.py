"""CPU-scale reproduction protocol: train and evaluate recipes over seeds, then one result table.

What it claims to measure: at one architecture, data subset and epoch budget, the clean accuracy and the
AutoAttack robust accuracy (per threat and union) of each method, as mean +- std over seeds. The budget is
the `-small` recipes' (small CNN, 8,000 CIFAR-10 training images, 8 epochs, batch 128, PGD-5 in training,
the same for every method); evaluation is on the first N CIFAR-10 *test* points (default 1,000) with
standard AutoAttack per threat. Every step is resumable: a finished run or evaluation is skipped, an
interrupted training continues with --resume, and AutoAttack keeps its own state. Runs go in parallel,
one thread each.

    python benchmarks/accuracy/protocol.py --phase all            # the main table (8 recipes x 3 seeds)
    python benchmarks/accuracy/protocol.py --phase all --ablations  # the generalist-d ablations
    python benchmarks/accuracy/protocol.py --phase table          # rebuild tables from what has finished

Run folders go to runs/accuracy/ (not committed); each run's eval.json, summary.json and config.json are
copied to benchmarks/results/accuracy/runs/NAME/, and the tables to benchmarks/results/accuracy/.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPES = ["natural", "pgd-at", "trades", "generalist-d", "avg", "max", "generalist-mn", "generalist-t"]
# Ablations of what the paper leaves open, on generalist-d (name -> overrides). 63 steps = one epoch here.
ABLATIONS = {
    "d-sync1": ["mixing.sync_every=1"],
    "d-sync10": ["mixing.sync_every=10"],
    "d-sync100": ["mixing.sync_every=100"],
    "d-sync-epoch": ["mixing.sync_every=63"],
    "d-no-redistribution": ["mixing.redistribute=false"],
    "d-final-0.6-at": ["learners.linf.final_weight=0.6", "learners.natural.final_weight=0.4"],
    "d-final-0.2-at": ["learners.linf.final_weight=0.2", "learners.natural.final_weight=0.8"],
}
COMMON = ["runtime.threads_per_learner=1", "eval.every_epochs=4"]


def generalist() -> str:
    return str(Path(sys.executable).parent / "generalist")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(command: list[str], log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        f.write(f"\n$ {' '.join(command)}\n")
        f.flush()
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({done.returncode}); see {log_path}")


def train_one(name: str, recipe: str, seed: int, overrides: list[str], runs: Path) -> Path:
    run_dir = runs / f"{name}-seed{seed}"
    if (run_dir / "final" / "global.pt").exists():
        return run_dir
    command = [generalist(), "train", "--recipe", f"{recipe}-small", "--run-dir", str(run_dir), "--seed", str(seed),
               "--backend", "local", "--quiet", *COMMON, *overrides]
    if (run_dir / "config.json").exists():
        command.append("--resume")
    start = time.perf_counter()
    run(command, runs / "logs" / f"{run_dir.name}.log")
    log(f"trained {run_dir.name} in {time.perf_counter() - start:.0f} s")
    return run_dir


def eval_tag(autoattack: str) -> str:
    return "aa-" + autoattack.replace(",", "+")


def eval_one(run_dir: Path, n: int, threats: list[str], autoattack: str) -> Path:
    """Evaluate the global learner on the first n test points; each AutoAttack setting has its own folder."""
    out = run_dir / "eval" / eval_tag(autoattack)
    if (out / "eval.json").exists():
        return out
    command = [generalist(), "eval", str(run_dir), "--n", str(n), "--autoattack", autoattack, "--threads", "1",
               "--quiet", "--out", str(out), *[a for t in threats for a in ("--threat", t)]]
    start = time.perf_counter()
    run(command, run_dir.parent / "logs" / f"{run_dir.name}.{eval_tag(autoattack)}.log")
    log(f"evaluated {run_dir.name} in {time.perf_counter() - start:.0f} s")
    return out


def publish(run_dir: Path, results: Path) -> None:
    """Copy the small, reviewable files of a run into the committed results folder."""
    target = results / "runs" / run_dir.name
    target.mkdir(parents=True, exist_ok=True)
    sources = [(run_dir / "config.json", "config.json"), (run_dir / "final" / "summary.json", "summary.json")]
    sources += [(e, f"eval-{e.parent.name}.json") for e in sorted((run_dir / "eval").glob("*/eval.json"))]
    for source, name in sources:
        if source.exists():
            (target / name).write_text(portable(source.read_text()))


def portable(text: str) -> str:
    """This machine's folders out of recorded commands: paths relative to the repository, bare tool names."""
    return text.replace(str(Path(sys.executable).parent) + "/", "").replace(str(REPO) + "/", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["train", "eval", "table", "all"], default="all")
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--ablations", action="store_true", help="the generalist-d ablations instead of the recipes")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--n", type=int, default=1000, help="test points per threat")
    parser.add_argument("--threats", nargs="+", default=["Linf", "L2", "L1"])
    parser.add_argument("--autoattack", default="standard")
    parser.add_argument("--runs", default=str(REPO / "runs" / "accuracy"))
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "accuracy"))
    args = parser.parse_args()
    runs, results = Path(args.runs), Path(args.results)
    plan = ([(name, "generalist-d", overrides) for name, overrides in ABLATIONS.items()] if args.ablations
            else [(recipe, recipe, []) for recipe in args.recipes])
    jobs = [(name, recipe, seed, overrides) for seed in args.seeds for name, recipe, overrides in plan]
    log(f"{len(jobs)} runs: {', '.join(sorted({j[0] for j in jobs}))} x seeds {args.seeds}")

    def one(job) -> Path:
        name, recipe, seed, overrides = job
        run_dir = runs / f"{name}-seed{seed}"
        if args.phase in ("train", "all"):
            run_dir = train_one(name, recipe, seed, overrides, runs)
        if args.phase in ("eval", "all") and (run_dir / "final" / "global.pt").exists():
            eval_one(run_dir, args.n, args.threats, args.autoattack)
        publish(run_dir, results)
        return run_dir

    failures = []
    with futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for job, fut in [(job, pool.submit(one, job)) for job in jobs]:
            try:
                fut.result()
            except Exception as error:  # noqa: BLE001 - one failed run must not stop the others
                failures.append(f"{job[0]}-seed{job[2]}: {error}")
                log(f"FAILED {failures[-1]}")
    tag = eval_tag(args.autoattack)
    finished = [runs / f"{n}-seed{s}" for n, _, s, _ in jobs if (runs / f"{n}-seed{s}" / "eval" / tag / "eval.json").exists()]
    if finished:
        out = results / f"{'ablations' if args.ablations else 'main'}-{tag}"
        relative = [os.path.relpath(p, REPO) for p in finished]  # the report names runs as given
        subprocess.run([generalist(), "report", *relative, "--out", os.path.relpath(out, REPO), "--eval-folder", tag],
                       check=False, cwd=REPO)
        log(f"table of {len(finished)} evaluated runs: {out}")
    if failures:
        sys.exit(f"{len(failures)} runs failed:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
