"""CPU reproduction protocol: train and evaluate recipes over seeds, then one result table.

What it claims to measure: at one architecture, data budget and epoch budget, the clean accuracy and the
AutoAttack robust accuracy (per threat and union) of each method, as mean +- std over seeds. Two scales
(`--scale`), the same budget for every method at each:
- `small` (the `-small` recipes): small CNN, 8,000 CIFAR-10 training images, 8 epochs, PGD-5 in training;
  results in benchmarks/results/accuracy/, run folders in runs/accuracy/.
- `cpu` (the `-cpu` recipes): the 147k-parameter small-cnn-wide, the full training split less 2,000
  validation images, 30 epochs, PGD-5 in training; every run is evaluated twice, at its final global
  learner and at its best-on-validation one. Results in benchmarks/results/accuracy/converged/, run folders
  in runs/accuracy-cpu/.
Evaluation is on the first N CIFAR-10 *test* points (default 1,000) with standard AutoAttack per threat.
Every step is resumable: a finished run or evaluation is skipped, an interrupted training continues with
--resume, and AutoAttack keeps its own state. Runs go in parallel, one thread each; a run's evaluations start
as soon as its own training ends (seed by seed: a seed's trainings, then every final global learner before any
best one, then the next seed's).

    python benchmarks/accuracy/protocol.py --phase all            # the main table (8 recipes x 3 seeds)
    python benchmarks/accuracy/protocol.py --phase all --ablations  # the generalist-d ablations
    python benchmarks/accuracy/protocol.py --phase table          # rebuild tables from what has finished
    nice -n 19 python benchmarks/accuracy/protocol.py --scale cpu --recipes pgd-at generalist-d trades natural \
        --threats Linf                                              # the converged Generalist-D claim
    nice -n 19 python benchmarks/accuracy/protocol.py --scale cpu --recipes generalist-mn max avg generalist-t \
        --threats Linf L2 --study study-multinorm                   # the converged multi-norm claim

Each run's eval.json (with its per-point results, points.parquet), summary.json, config.json and per-epoch metrics
(epochs.jsonl) are copied to RESULTS/runs/NAME/ (never the weights), and the tables to RESULTS/. The converged
tables read a run's published copy where its run folder is gone.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import heapq
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tables  # noqa: E402 - this folder's module, beside the script

REPO = Path(__file__).resolve().parents[2]
RECIPES = ["natural", "pgd-at", "trades", "generalist-d", "avg", "max", "generalist-mn", "generalist-t"]
# Ablations of what the paper leaves open, on generalist-d (name -> overrides). 63 steps = one epoch here.
# sync_every=1 and final weights (linf 0.4, natural 0.6) are the recipe's defaults: the generalist-d runs of the
# main table are that setting. d-sync1 trains it again beside the other variants, so that its wall time is
# measured under the same load as theirs (and its accuracy must equal the reference's: training is deterministic).
ABLATION_REFERENCE = "generalist-d"
ABLATIONS = {
    "d-sync1": ["mixing.sync_every=1"],
    "d-sync10": ["mixing.sync_every=10"],
    "d-sync100": ["mixing.sync_every=100"],
    "d-sync-epoch": ["mixing.sync_every=63"],
    "d-no-redistribution": ["mixing.redistribute=false"],
    "d-final-0.6-at": ["learners.linf.final_weight=0.6", "learners.natural.final_weight=0.4"],
    "d-final-0.2-at": ["learners.linf.final_weight=0.2", "learners.natural.final_weight=0.8"],
}
# Per scale: the recipe suffix, extra overrides, where run folders and results go, which checkpoints are evaluated.
SCALES = {
    "small": {"suffix": "-small", "overrides": ["eval.every_epochs=4"], "runs": "runs/accuracy",
              "results": "benchmarks/results/accuracy", "checkpoints": ["final"], "quiet": True},
    "cpu": {"suffix": "-cpu", "overrides": [], "runs": "runs/accuracy-cpu",
            "results": "benchmarks/results/accuracy/converged", "checkpoints": ["final", "best"], "quiet": False},
}
COMMON = ["runtime.threads_per_learner=1"]


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


def train_one(name: str, recipe: str, seed: int, overrides: list[str], runs: Path, scale: dict) -> Path:
    run_dir = runs / f"{name}-seed{seed}"
    if (run_dir / "final" / "global.pt").exists():
        return run_dir
    command = [generalist(), "train", "--recipe", recipe + scale["suffix"], "--run-dir", str(run_dir),
               "--seed", str(seed), "--backend", "local", *(["--quiet"] if scale["quiet"] else []),
               *COMMON, *scale["overrides"], *overrides]
    if (run_dir / "config.json").exists():  # interrupted: continue, or start over if it never checkpointed
        command += ["--resume", "--restart-if-no-checkpoint"]
    start = time.perf_counter()
    run(command, runs / "logs" / f"{run_dir.name}.log")
    log(f"trained {run_dir.name} in {time.perf_counter() - start:.0f} s")
    return run_dir


DEFAULT_THREATS = ["Linf", "L2", "L1"]


def eval_tag(autoattack: str, threats: list[str], checkpoint: str = "final", bn: str = "auto") -> str:
    """The evaluation folder's name: the checkpoint when not the final one, `savedbn-` when the global
    learner's BatchNorm statistics are scored as its EMA stored them, the AutoAttack setting, and the threats
    when not all three (tables.CHECKPOINT_PREFIXES reads these names)."""
    tag = (("" if checkpoint == "final" else checkpoint + "-") + ("savedbn-" if bn == "saved" else "")
           + "aa-" + autoattack.replace(",", "+"))
    return tag if threats == DEFAULT_THREATS else tag + "-" + "+".join(threats)


def eval_one(run_dir: Path, n: int, threats: list[str], autoattack: str, checkpoint: str = "final",
             bn: str = "auto") -> Path:
    """Evaluate the global learner of a checkpoint (final, last, or best on validation) on the first n test
    points, with its BatchNorm statistics as shipped (bn auto) or as stored (bn saved); each checkpoint,
    statistics and AutoAttack setting has its own folder."""
    tag = eval_tag(autoattack, threats, checkpoint, bn)
    out = run_dir / "eval" / tag
    if (out / "eval.json").exists():
        return out
    final = run_dir / "eval" / eval_tag(autoattack, threats, "final" if bn == "auto" else "last", bn)
    if checkpoint == "best" and (final / "eval.json").exists() and best_is_final(run_dir):
        # The same tensors: an identical evaluation would spend minutes of AutoAttack to repeat the final one.
        shutil.copytree(final, out, ignore=shutil.ignore_patterns("blocks", "*.tmp"))
        (out / "SAME_AS_FINAL.txt").write_text(f"The best-on-validation global learner of this run is its final one "
                                               f"(identical tensors): a copy of ../{final.name}.\n")
        log(f"{run_dir.name}: best on validation = final; copied {final.name} to {tag}")
        return out
    command = [generalist(), "eval", str(run_dir), "--checkpoint", checkpoint, "--n", str(n),
               "--autoattack", autoattack, "--threads", "1", "--bn-stats", bn,
               "--quiet", "--out", str(out), *[a for t in threats for a in ("--threat", t)]]
    start = time.perf_counter()
    run(command, run_dir.parent / "logs" / f"{run_dir.name}.{tag}.log")
    log(f"evaluated {run_dir.name} in {time.perf_counter() - start:.0f} s")
    return out


def evaluation_stages(checkpoints: list[str]) -> list[tuple[str, str]]:
    """The (checkpoint, statistics) of a run's evaluations, most wanted first: the final global learner as
    shipped, then the best-on-validation one, then both scored with the statistics their EMA stored."""
    return [(checkpoint, "auto") for checkpoint in checkpoints] + [("last", "saved"), ("best", "saved")]


def evaluation_plan(run_dirs: list[Path], checkpoints: list[str]) -> list[list[tuple[Path, str, str]]]:
    """The evaluations of trained runs as chains of (run folder, checkpoint, statistics), most wanted first:
    every run's final global learner as shipped, then the best-on-validation ones, then both scored with the
    statistics their EMA stored (runs that re-estimate them). A chain runs in one worker, in order: a best
    checkpoint that is the final one rides behind it, so that its evaluation is a copy instead of an hour of
    AutoAttack started beside an identical one."""
    stages = [[(run_dir, checkpoint, bn) for run_dir in run_dirs if bn == "auto" or reestimates_bn(run_dir)]
              for checkpoint, bn in evaluation_stages(checkpoints)]
    chains: list[list[tuple[Path, str, str]]] = []
    final_chain: dict[tuple[Path, str], list] = {}  # (run, statistics) -> the chain of its final evaluation
    for stage in stages:
        for run_dir, checkpoint, bn in stage:
            if checkpoint == "best" and (run_dir, bn) in final_chain and best_is_final(run_dir):
                final_chain[(run_dir, bn)].append((run_dir, checkpoint, bn))
                continue
            chains.append([(run_dir, checkpoint, bn)])
            if checkpoint in ("final", "last"):
                final_chain[(run_dir, bn)] = chains[-1]
    return chains


def train_then_evaluate(trainings: list, train: Callable[[Any], Path],
                        chains_of: Callable[[Path], list[list[tuple[Path, str, str]]]],
                        evaluate: Callable[[list[tuple[Path, str, str]]], None], workers: int,
                        checkpoints: list[str], label: Callable[[Any], str],
                        group: Callable[[Any], int] = lambda job: 0) -> list[str]:
    """Train, and evaluate each run as soon as its own training ends, not when every training has (the eval
    phase waits for the whole train phase: with runs that end far apart, a core idled for the difference, 35
    minutes in the multi-norm chain of 2026-12-06). One pool of `workers` threads; each takes the most wanted
    ready work: the lowest group first (the seed's place: seed 1's evaluations before seed 2's trainings, so that
    a seed's answer comes first and a worker that seed has nothing left for trains the next one); in a group, the
    evaluation of a trained run's final global learner (its answer) before any training, then the trainings, then
    the other evaluation chains by stage across runs (every best one after every final one), each stage in the
    order its runs finished. (Trainings went first once; a `-cpu` training takes a session of three hours, so the
    answers of runs already trained waited a whole session behind it: generalist-mn and MAX seed 1 on 2026-12-07.)
    A failure is recorded and returned, and the other work goes on."""
    # In a group: the first stage (the final global learner) ranks 0, a training 1, every later stage after.
    stage_rank = {stage: 0 if i == 0 else i + 1 for i, stage in enumerate(evaluation_stages(checkpoints))}
    order = itertools.count()
    # A heap of (group, rank, order, kind, work).
    ready = [(group(job), 1, next(order), "train", job) for job in trainings]
    heapq.heapify(ready)
    trainings_left = len(trainings)
    changed = threading.Condition()
    failures: list[str] = []

    def work() -> None:
        nonlocal trainings_left
        while True:
            with changed:
                while not ready and trainings_left:  # nothing ready, but a training still to end may bring work
                    changed.wait()
                if not ready:
                    return
                run_group, _, _, kind, item = heapq.heappop(ready)
            chains = []
            try:
                if kind == "train":
                    chains = chains_of(train(item))
                else:
                    evaluate(item)
            except Exception as error:  # noqa: BLE001 - one failed run must not stop the others
                failures.append(f"{label(item)}: {error}")
                log(f"FAILED {failures[-1]}")
            with changed:
                for chain in chains:
                    heapq.heappush(ready, (run_group, stage_rank[chain[0][1:]], next(order), "eval", chain))
                trainings_left -= kind == "train"
                changed.notify_all()

    threads = [threading.Thread(target=work, name=f"study-worker-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def best_is_final(run_dir: Path) -> bool:
    """Whether the best-on-validation checkpoint holds exactly the final global learner: the global EMA of the
    last checkpoint (final/global.pt may hold re-estimated statistics instead of the stored ones)."""
    import torch

    from generalist import checkpoint as ckpt

    best = ckpt.find_checkpoint(run_dir / "checkpoints" / "best")
    last = ckpt.find_checkpoint(run_dir / "checkpoints" / "last")
    if best is None or last is None:
        return False
    best_state = ckpt.load_payload(best, "global")["state"]
    final_state = ckpt.load_payload(last, "global")["state"]
    return best_state.keys() == final_state.keys() and all(torch.equal(best_state[k], final_state[k])
                                                           for k in best_state)


def reestimates_bn(run_dir: Path) -> bool:
    """Whether the run re-estimates its global learner's BatchNorm statistics (mixing.global_bn)."""
    return json.loads((run_dir / "config.json").read_text())["mixing"].get("global_bn") == "reestimate"


def publish(run_dir: Path, results: Path) -> None:
    """Copy the small, reviewable files of a finished run into the committed results folder (a run still
    training would leave a partial copy that looks like a result)."""
    if not (run_dir / "final" / "summary.json").exists():
        return
    target = results / "runs" / run_dir.name
    target.mkdir(parents=True, exist_ok=True)
    sources = [(run_dir / "config.json", "config.json"), (run_dir / "final" / "summary.json", "summary.json"),
               (run_dir / "metrics" / "epochs.jsonl", "epochs.jsonl")]
    sources += [(e, f"eval-{e.parent.name}.json") for e in sorted((run_dir / "eval").glob("*/eval.json"))]
    for source, name in sources:
        if source.exists():
            (target / name).write_text(portable(source.read_text()))
    # The per-point results too (a few kB each): without them a table that combines evaluations point by point
    # cannot be rebuilt once the run folder is gone (the machines that train the study keep nothing).
    for points in sorted((run_dir / "eval").glob("*/points.parquet")):
        if (points.parent / "eval.json").exists():
            shutil.copyfile(points, target / f"eval-{points.parent.name}.points.parquet")


def portable(text: str) -> str:
    """This machine's folders out of recorded commands: paths relative to the repository, bare tool names."""
    return text.replace(str(Path(sys.executable).parent) + "/", "").replace(str(REPO) + "/", "")


def write_study(runs: Path, results: Path, ablations: bool, seeds: list[int]) -> None:
    """study.md / ablations.md and their trade-off plot, from every run folder evaluated so far."""
    names = [ABLATION_REFERENCE, *ABLATIONS] if ablations else RECIPES
    # The ablations compare variants with one attack (PGD-20, eval/aa-none) even where a run also has AutoAttack.
    only = (eval_tag("none", DEFAULT_THREATS),) if ablations else None
    combined = [c for name in names for seed in seeds
                if (c := tables.combine_run(runs / f"{name}-seed{seed}", name, seed, only)) is not None]
    if not combined:
        log("nothing evaluated yet: no table")
        return
    stem = "ablations" if ablations else "study"
    versions = next(json.loads(e.read_text())["metadata"]["versions"] for e in (runs).glob("*/eval/*/eval.json"))
    lines = [f"# {'Ablations of generalist-d' if ablations else 'Reproduction study'}: CPU scale", "",
             f"Written by `python benchmarks/accuracy/protocol.py --phase table{' --ablations' if ablations else ''}` "
             f"on {time.strftime('%Y-%m-%d')} from the run folders in runs/accuracy/ (the budget and the commands "
             "that made them: [README.md](README.md)). Versions: "
             + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".", "",
             "Test points: the first N CIFAR-10 test images (column `points`). Each threat column is the per-point "
             "worst case over every evaluation of the run (last column: which attacks); `union` counts a point only "
             "if it is robust under every threat. Mean ± sample std over the seeds listed; global learner only.", ""]
    if ablations:
        lines += ["`syncs`: global-learner updates over the whole run (one per round of `sync_every` steps, plus "
                  "every epoch end), `sync s`: their summed time, `train s`: the run's training wall time (local "
                  "backend, one thread, another job on the second core).", "",
                  tables.ablation_table(combined, {ABLATION_REFERENCE: "none (sync_every=1, linf 0.4 / natural 0.6)",
                                                   **{k: " ".join(v) for k, v in ABLATIONS.items()}})]
        same = tables.identical_groups(combined)
        if same:
            lines += ["", "Variants with identical numbers on every seed (the same computation; training is "
                      "deterministic, so this doubles as a check): " + "; ".join(" = ".join(g) for g in same) + "."]
    else:
        lines.append(tables.accuracy_table(combined))
    plot = tables.plot_tradeoff(combined, results / f"{stem}-tradeoff.png",
                                ["Linf", "L2", "union"] if ablations else ["Linf", "union"],
                                f"{stem}: clean vs robust accuracy, mean ± std over seeds (CIFAR-10, CPU scale)",
                                off_plot=("natural",))
    lines += ["", f"![trade-off]({plot.name})", ""]
    (results / f"{stem}.md").write_text("\n".join(lines))
    log(f"{len(combined)} evaluated runs: {results / stem}.md")


def write_converged_study(runs: Path, results: Path, recipes: list[str], seeds: list[int],
                          study: str = "study") -> None:
    """converged/<study>.md: one table per checkpoint (final, best on validation), their trade-off plots, and
    the training curves of seed 0 of each Generalist recipe. `study` names the file, so that the multi-norm
    recipes' tables (study-multinorm) sit beside generalist-d's (study) instead of over them."""
    from generalist.report import load_run, plot_curves

    results.mkdir(parents=True, exist_ok=True)
    lines = ["# Reproduction study: converged CPU scale", "",
             f"Written by `python benchmarks/accuracy/protocol.py --scale cpu --phase table --recipes "
             f"{' '.join(recipes)}{'' if study == 'study' else ' --study ' + study}` on "
             f"{time.strftime('%Y-%m-%d')} from the run folders in runs/accuracy-cpu/ (the budget, the pilot and the "
             "commands: [README.md](README.md)). Test points: the first N CIFAR-10 test images (column `points`). "
             "Each threat column is the per-point worst case over every evaluation of that checkpoint (last column: "
             "which attacks); `union` counts a point only if it is robust under every threat. Mean ± sample std "
             "over the seeds listed; global learner only.", "",
             "Variant: the `-cpu` recipes as they are now: the paper's schedule on a clock of 120 slices of the "
             "optimiser steps (`schedule.clock_epochs=120`) and the global learner's BatchNorm statistics "
             "re-estimated (`mixing.global_bn=reestimate`). \"As shipped\" scores final/global.pt (re-estimated "
             "statistics); \"as its EMA stored them\" scores the same weights with the interpolated statistics "
             "the reference uses. The earlier data-epoch-clock runs: [epoch-clock/study.md](epoch-clock/study.md).",
             ""]
    found = False
    for checkpoint, title in (
            ("final", "Final global learner (after epoch 30), BatchNorm statistics as shipped"),
            ("final-savedbn", "Final global learner, BatchNorm statistics as its EMA stored them"),
            ("best", "Best global learner on validation (clean + PGD-10 on 2,000 held-out training images, every "
                     "2nd epoch), BatchNorm statistics as shipped"),
            ("best-savedbn", "Best global learner on validation, BatchNorm statistics as its EMA stored them")):
        combined = []
        for name in recipes:
            for seed in seeds:
                # The run folder where it is here, else its published copy (run folders do not outlive the
                # machine that trained them; the published copy holds every finished evaluation).
                for folder in (runs / f"{name}-seed{seed}", results / "runs" / f"{name}-seed{seed}"):
                    if tags := tables.checkpoint_folders(folder, checkpoint):
                        combined.append(tables.combine_run(folder, name, seed, tags))
                        break
        if not combined:
            continue
        found = True
        threats = [t for t in tables.THREATS if any(t in c.robust for c in combined)]
        plot = tables.plot_tradeoff(combined, results / f"{study}-tradeoff-{checkpoint}.png",
                                    ["Linf"] if threats == ["Linf"] else [*threats, "union"],
                                    f"{checkpoint} checkpoint: clean vs robust accuracy, mean ± std over seeds "
                                    "(CIFAR-10, converged CPU scale)", off_plot=("natural",))
        lines += [f"## {title}", "", tables.accuracy_table(combined), ""]
        if differences := tables.difference_table(combined):
            lines += ["Generalist minus its baselines, paired by seed (same validation split, initial weights and "
                      "batch order); in brackets each seed's difference:", "", differences, ""]
        if by_point := tables.point_pairs_table(combined):
            lines += ["The same seed by seed on the same test points; in brackets the points correct (or robust) in "
                      "Generalist's model only / in the baseline's only (the paired standard error of one seed's "
                      "difference is about sqrt(their sum) / points):", "", by_point, ""]
        lines += [f"![trade-off, {checkpoint}]({plot.name})", ""]
    if not found:
        log("nothing evaluated yet: no table")
        return
    curves = []
    # Every Generalist run, and pgd-at's (seed 0 was the pilot: its validation curve is what the 30-epoch budget
    # was chosen on).
    for name in [r for r in recipes if r in tables.GENERALIST or r == "pgd-at"]:
        for seed in seeds:
            run_dir, plot = runs / f"{name}-seed{seed}", results / f"curves-{name}-seed{seed}.png"
            if (run_dir / "final" / "summary.json").exists():
                curves.append(plot_curves(load_run(run_dir), plot))
            elif plot.is_file():  # drawn when the run folder was here
                curves.append(plot)
    if curves:
        lines += ["## Training curves", ""] + [f"![{c.stem}]({c.name})" for c in curves] + [""]
    (results / f"{study}.md").write_text("\n".join(lines))
    log(f"tables: {results / (study + '.md')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["train", "eval", "run", "table", "all"], default="all",
                        help="run: train, and evaluate each run as soon as its training ends; all: run, then table")
    parser.add_argument("--scale", choices=list(SCALES), default="small",
                        help="small: the -small recipes (8 epochs, 8,000 images); cpu: the -cpu recipes (converged)")
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--ablations", action="store_true", help="the generalist-d ablations instead of the recipes")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--n", type=int, default=1000, help="test points per threat")
    parser.add_argument("--threats", nargs="+", default=DEFAULT_THREATS)
    parser.add_argument("--autoattack", default="standard")
    parser.add_argument("--runs", help="run folders (default: the scale's, under runs/)")
    parser.add_argument("--results", help="results folder (default: the scale's, under benchmarks/results/)")
    parser.add_argument("--study", default="study",
                        help="--scale cpu: the tables' file name in the results folder (study-multinorm: the "
                             "multi-norm recipes')")
    args = parser.parse_args()
    scale = SCALES[args.scale]
    runs, results = Path(args.runs or REPO / scale["runs"]), Path(args.results or REPO / scale["results"])
    if args.ablations and args.scale != "small":
        parser.error("--ablations is defined at --scale small only")
    plan = ([(ABLATION_REFERENCE, "generalist-d", [])]
            + [(name, "generalist-d", overrides) for name, overrides in ABLATIONS.items()] if args.ablations
            else [(recipe, recipe, []) for recipe in args.recipes])
    jobs = [(name, recipe, seed, overrides) for seed in args.seeds for name, recipe, overrides in plan]
    log(f"{len(jobs)} runs: {', '.join(sorted({j[0] for j in jobs}))} x seeds {args.seeds}")

    failures = []

    def run_all(work: list, label) -> None:
        """Each (function, item) in a pool of --jobs workers, in order; a failure is recorded, not raised."""
        with futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for item, fut in [(item, pool.submit(fn, item)) for fn, item in work]:
                try:
                    fut.result()
                except Exception as error:  # noqa: BLE001 - one failed run must not stop the others
                    failures.append(f"{label(item)}: {error}")
                    log(f"FAILED {failures[-1]}")

    def train(job) -> Path:
        name, recipe, seed, overrides = job
        return train_one(name, recipe, seed, overrides, runs, scale)

    def evaluate(chain: list[tuple[Path, str, str]]) -> None:
        for run_dir, checkpoint, bn in chain:
            eval_one(run_dir, args.n, args.threats, args.autoattack, checkpoint, bn)
            publish(run_dir, results)  # each result committed-ready as it comes, not when every run is done

    def label(item) -> str:
        """A training job or an evaluation chain, as a failure names it."""
        return f"{item[0]}-seed{item[2]}" if isinstance(item[0], str) else f"{item[0][0].name} {item[0][1]}"

    if args.phase == "train":
        run_all([(train, job) for job in jobs], label)
    if args.phase in ("run", "all"):
        failures += train_then_evaluate(jobs, train, lambda run_dir: evaluation_plan([run_dir], scale["checkpoints"]),
                                        evaluate, args.jobs, scale["checkpoints"], label,
                                        group=lambda job: args.seeds.index(job[2]))
    run_dirs = [runs / f"{name}-seed{seed}" for name, _, seed, _ in jobs]
    if args.phase == "eval":
        plan = evaluation_plan([r for r in run_dirs if (r / "final" / "global.pt").exists()], scale["checkpoints"])
        run_all([(evaluate, chain) for chain in plan], label)
    for run_dir in run_dirs:
        publish(run_dir, results)
    # The train and eval phases write no table: a train phase of other recipes once rewrote study.md with their
    # empty tables over the generalist-d study's (the multi-norm chain, 2026-12-04), and a chain's eval phase names
    # only the recipes it trained, while its table phase names every recipe of the table (TABLE_RECIPES).
    if args.phase in ("table", "all"):
        if args.scale == "cpu":
            write_converged_study(runs, results, args.recipes, args.seeds, args.study)
        else:
            write_study(runs, results, ablations=args.ablations, seeds=args.seeds)
    if failures:
        sys.exit(f"{len(failures)} runs failed:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
