"""Why a converged Generalist run loses to its baseline: the path between its two learners.

The final global learner of `generalist-d-cpu` mixes its learners 0.4 linf + 0.6 natural (the recipe's final
weights; strictly it is an EMA over rounds of that mixture while the weight moves, so it sits near the path's
w = 0.6 point, and it is scored on its own as well). This script scores every point of the path between the
learners' final EMA weights, w x natural + (1 - w) x linf for w = 0, 0.1, ..., 1, on the run's validation
points (clean and PGD-10 Linf, as the training loop's validation), twice:
- `stored`: running statistics interpolated like the weights (what `mixing.global_bn=interpolate` ships);
- `re-estimated`: statistics recomputed by the run's own rule for that weight (generalist.bn_stats: the first
  `mixing.bn_batches` training batches, shared between clean inputs and the linf learner's PGD points by w).
PGD-AT's final global of the same seed, scored by the same code, is the line to beat; the issue's goal
(PGD-AT + 2 clean at >= PGD-AT - 1 robust) is a box on the plot. If no point of the path reaches the box,
changing the final weight cannot make generalist-d win at this scale: the learners themselves fall short.

    nice -n 19 python benchmarks/accuracy/interpolation_path.py --runs runs/accuracy-cpu --seeds 0 1

Reads runs/accuracy-cpu/{generalist-d,pgd-at}-seed{S}/ (checkpoints/last and final/global.pt), writes
benchmarks/results/accuracy/converged/interpolation-path.{md,json,png}. One thread; about 10 minutes a seed on a
loaded 2-core machine.

`--recipe generalist-mn` scores the multi-norm pair the same way: the path l2 weight w, w x l2 + (1 - w) x linf,
between `generalist-mn`'s learners (its final global mixes them 0.5 / 0.5), on clean, PGD-10 Linf, PGD-10 L2 and
their union (right clean and under both attacks), against MAX's final global, the multi-norm goal being
`generalist-mn` union >= MAX's. Reads {generalist-mn,max}-seed{S}/, writes interpolation-path-mn.{md,json,png}.

`--recipe generalist-t` asks what the natural learner does to the multi-norm global: the path natural weight w,
w x natural + (1 - w) / 2 x (linf + l2), from the even mix of its two adversarial learners (w = 0) to its natural
learner (w = 1), through its final global's point (w = 1/3, added to the grid), scored as `generalist-mn`'s path
against AVG's final global (the study pairs generalist-t with AVG: both give every threat an equal share). Reads
{generalist-t,avg}-seed{S}/, writes interpolation-path-t.{md,json,png}. `--recipe generalist-t-linf-l2` scores
`generalist-mn`'s path, linf to l2, between `generalist-t`'s adversarial learners with the natural learner's weight
at 0 (off the global's path), against AVG: whether any mix of them reaches it. Writes interpolation-path-t-linf-l2.*.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from generalist import checkpoint as ckpt
from generalist import mixing
from generalist.config import load_run_config
from generalist.data import TensorData, derive_seed
from generalist.evaluation.validation import clean_and_pgd_accuracy, run_threats
from generalist.mixing import clock_tick, mixing_weights
from generalist.models import build_model
from generalist.report import fmt
from generalist.training import prepare_run_data, reestimate_global_bn

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "accuracy" / "converged"
WEIGHTS = [round(0.1 * k, 1) for k in range(11)]


@dataclass(frozen=True)
class Pair:
    """A path between a Generalist recipe's learners: from the even mix of the `start` learners at w = 0 to the
    `end` learner at w = 1; the baseline it must beat (and its name in tables), the results' file name, and what
    the path is, in words, for the table and the plot. A recipe's other learners get no weight on the path; then
    (`through_global` false) the global learner is not on it."""
    recipe: str
    start: tuple[str, ...]
    end: str
    baseline: str
    name: str
    baseline_label: str = ""
    description: str = ""
    through_global: bool = True

    @property
    def weight_key(self) -> str:
        return f"{self.end}_weight"

    def learner_weights(self, w: float) -> dict[str, float]:
        """The share of each learner at the path's point w."""
        return {**{name: (1 - w) / len(self.start) for name in self.start}, self.end: w}


PAIRS = {"generalist-d": Pair("generalist-d", ("linf",), "natural", "pgd-at", "interpolation-path", "PGD-AT",
                              "the linf learner (w = 0) to the natural learner (w = 1)"),
         "generalist-mn": Pair("generalist-mn", ("linf",), "l2", "max", "interpolation-path-mn", "MAX",
                               "the linf learner (w = 0) to the l2 learner (w = 1)"),
         "generalist-t": Pair("generalist-t", ("linf", "l2"), "natural", "avg", "interpolation-path-t", "AVG",
                              "linf + l2, half each (w = 0), to the natural learner (w = 1)"),
         "generalist-t-linf-l2": Pair("generalist-t", ("linf",), "l2", "avg", "interpolation-path-t-linf-l2", "AVG",
                                      "the linf learner (w = 0) to the l2 learner (w = 1), the natural learner's "
                                      "weight 0", through_global=False)}


def path_point(states: dict[str, dict], order: list[str], pair: Pair, w: float) -> dict:
    """The path's point w: the learners' states mixed by the global learner's own rule (mixing.interpolate), in
    the run's learner order; for two learners (1 - w) start + w end."""
    shares = pair.learner_weights(w)
    return mixing.interpolate([states[name] for name in order], [shares.get(name, 0.0) for name in order])


def path_grid(final_weight: float) -> list[float]:
    """0, 0.1, ..., 1 and the global learner's own final weight (generalist-t's 1/3), so the shipped global is
    recomputed on the path."""
    return sorted(set(WEIGHTS) | {final_weight})


def model_of(config, data, state: dict) -> torch.nn.Module:
    model = build_model(config.model.name, **data.model_kwargs)
    model.load_state_dict(state)
    return model


def score(config, data, model: torch.nn.Module, generator_seed: int) -> dict[str, float]:
    """Clean and PGD accuracy (%) on the run's validation points, one fixed PGD generator per call."""
    n = config.eval.n_examples
    generator = torch.Generator().manual_seed(generator_seed)
    threats = run_threats(config)
    accuracy = clean_and_pgd_accuracy(model, TensorData(data.val.x[:n], data.val.y[:n]), threats,
                                      pgd_steps=config.eval.pgd_steps, batch_size=config.eval.batch_size,
                                      generator=generator, device=torch.device("cpu"), union=len(threats) > 1)
    return {k: round(100 * v, 2) for k, v in accuracy.items()}


def reestimated(config, data, state: dict, pair: Pair, w: float, tick: int) -> torch.nn.Module:
    """`state` as a model whose statistics the run's own rule (training.reestimate_global_bn: same batches, same
    generator) re-estimated with the shares of the path's point w (for generalist-d (1 - w) linf points and w
    clean inputs), not the run's final weights."""
    weights = pair.learner_weights(w)
    return reestimate_global_bn(config, data, model_of(config, data, state), "cpu", tick,
                                [weights.get(learner.name, 0.0) for learner in config.learners])


def path_for_seed(runs: Path, seed: int, pair: Pair = PAIRS["generalist-d"]) -> dict:
    run = runs / f"{pair.recipe}-seed{seed}"
    config = load_run_config(run)
    data = prepare_run_data(config)
    last = run / "checkpoints" / "last"
    order = [learner.name for learner in config.learners]
    ema = {name: ckpt.load_payload(last, f"learner-{name}")["ema"] for name in order}
    steps = config.schedule.epochs * data.stream.steps_per_epoch
    tick = clock_tick(config, steps - 1, data.stream.steps_per_epoch)
    final = dict(zip((l.name for l in config.learners), mixing_weights(tick, config)))
    stored_global = ckpt.load_payload(last, "global")["state"]
    # The global learner's own point, where the path passes through it: how far the path is from the global.
    on_path = final[pair.end] if pair.through_global else None
    if on_path is not None:
        check = path_point(ema, order, pair, on_path)
        drift = max((check[k] - stored_global[k]).abs().max().item() for k in check if check[k].is_floating_point())
        print(f"seed {seed}: final weights {final}; |path(w={on_path}) - stored global| = {drift:.2e}", flush=True)
    shipped = ckpt.load_state_dict_file(run / "final" / "global.pt")
    eval_seed = derive_seed(seed, "interpolation-path")
    rows = []
    for w in (path_grid(on_path) if on_path is not None else WEIGHTS):
        t0 = time.time()
        state = path_point(ema, order, pair, w)
        est_model = reestimated(config, data, state, pair, w, tick)
        row = {pair.weight_key: w, "stored": score(config, data, model_of(config, data, state), eval_seed),
               "reestimated": score(config, data, est_model, eval_seed)}
        if w == on_path:  # the shipped global, recomputed here: the same rule gives the same statistics
            est_state = est_model.state_dict()
            row["shipped_max_abs_diff"] = max((est_state[k].double() - shipped[k].double()).abs().max().item()
                                              for k in shipped)
        rows.append(row)
        print(f"  w={w:.2f} stored {row['stored']} re-estimated {row['reestimated']} ({time.time() - t0:.0f} s)"
              + (f"; max |this - final/global.pt| {row['shipped_max_abs_diff']:.1e}" if w == on_path else ""),
              flush=True)
    global_scores = {"stored": score(config, data, model_of(config, data, stored_global), eval_seed),
                     "shipped": score(config, data, model_of(config, data, shipped), eval_seed)}
    print(f"  {pair.recipe} seed {seed} global: {global_scores}", flush=True)
    baseline = runs / f"{pair.baseline}-seed{seed}"
    baseline_config = load_run_config(baseline)
    baseline_data = prepare_run_data(baseline_config)
    baseline_states = {"stored": ckpt.load_payload(baseline / "checkpoints" / "last", "global")["state"],
                       "shipped": ckpt.load_state_dict_file(baseline / "final" / "global.pt")}
    reference = {kind: score(baseline_config, baseline_data, model_of(baseline_config, baseline_data, state),
                             eval_seed) for kind, state in baseline_states.items()}
    print(f"  {pair.baseline} seed {seed}: {reference}", flush=True)
    # (The generalist-d results name the baseline `pgd_at`, as the published interpolation-path.json has it.)
    return {"seed": seed, "final_weights": final, **({"stored_global_drift": drift} if on_path is not None else {}),
            "path": rows, "global": global_scores, "pgd_at" if pair.baseline == "pgd-at" else "baseline": reference,
            "points": config.eval.n_examples, "pgd_steps": config.eval.pgd_steps}


def over_seeds(results: list[dict]) -> str:
    """What a table's numbers are: one seed's, or the mean ± std over several."""
    seeds = [str(r["seed"]) for r in results]
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± std over seeds {', '.join(seeds)}"


def write_table(results: list[dict], command: str) -> str:
    pgd = "pgd_acc_Linf"
    lines = [
        "# The path between generalist-d's learners (converged -cpu scale)",
        "",
        "Variant: `generalist-d-cpu` / `pgd-at-cpu` as trained for the converged study (step clock, re-estimated",
        "statistics). Each row: the learners' final EMA weights interpolated, w x natural + (1 - w) x linf,",
        f"scored on the run's first {results[0]['points']} validation points, clean / PGD-{results[0]['pgd_steps']}"
        " Linf (eps 8/255), in %,",
        f"{over_seeds(results)}. `stored`: running statistics"
        " interpolated like the weights;",
        "`re-estimated`: the run's rule (generalist/bn_stats.py) with the shares set by w. The global learner itself",
        "is an EMA over rounds of the learners' mixture while its weight moves, so it sits near, not on, the",
        "path's w = 0.6 point; its own rows are at the bottom. Goal box of the issue: clean >= PGD-AT + 2 at",
        "PGD >= PGD-AT - 1.",
        "",
        f"Command: `{command}`",
        "",
        "| natural weight w | stored clean | stored PGD | re-estimated clean | re-estimated PGD "
        "| in goal box (re-est.) |",
        "|---|---|---|---|---|---|",
    ]
    reference = [r["pgd_at"]["shipped"] for r in results]
    ref_clean = statistics.fmean(r["clean_acc"] for r in reference)
    ref_pgd = statistics.fmean(r[pgd] for r in reference)
    for i, w in enumerate(WEIGHTS):
        stored = [r["path"][i]["stored"] for r in results]
        est = [r["path"][i]["reestimated"] for r in results]
        in_box = all(e["clean_acc"] >= ref["clean_acc"] + 2 and e[pgd] >= ref[pgd] - 1
                     for e, ref in zip(est, reference))
        lines.append(f"| {w:.1f} | {fmt([s['clean_acc'] for s in stored])} | {fmt([s[pgd] for s in stored])} | "
                     f"{fmt([e['clean_acc'] for e in est])} | {fmt([e[pgd] for e in est])} | "
                     f"{'yes' if in_box else 'no'} |")
    lines += [
        f"| generalist-d final global, shipped (re-estimated) | | | "
        f"{fmt([r['global']['shipped']['clean_acc'] for r in results])} | "
        f"{fmt([r['global']['shipped'][pgd] for r in results])} | |",
        "| generalist-d final global, stored statistics | "
        f"{fmt([r['global']['stored']['clean_acc'] for r in results])}"
        f" | {fmt([r['global']['stored'][pgd] for r in results])} | | | |",
        f"| PGD-AT final global, shipped (re-estimated) | | | {fmt([r['clean_acc'] for r in reference])} | "
        f"{fmt([r[pgd] for r in reference])} | |",
        f"| PGD-AT final global, stored statistics | {fmt([r['pgd_at']['stored']['clean_acc'] for r in results])} | "
        f"{fmt([r['pgd_at']['stored'][pgd] for r in results])} | | | |",
        "",
        f"Goal box, from the mean PGD-AT shipped global: clean >= {ref_clean + 2:.2f}, PGD >= {ref_pgd - 1:.2f} "
        "(the column checks each seed against its own PGD-AT).",
        "",
        "How far the path's w = 0.6 point is from the global learner: the largest |path(0.6) - stored global| over"
        f" all entries is {max(r['stored_global_drift'] for r in results):.1e}; the largest |path(0.6) re-estimated -"
        " final/global.pt| (statistics included) is "
        f"{max(p.get('shipped_max_abs_diff', 0) for r in results for p in r['path']):.1e}.",
        "",
        "![clean against PGD along the path](interpolation-path.png)",
    ]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pgd = "pgd_acc_Linf"
    fig, ax = plt.subplots(figsize=(7, 5))
    colours = ["tab:blue", "tab:orange", "tab:green"]
    for r, colour in zip(results, colours):
        for kind, style in (("stored", ":"), ("reestimated", "-")):
            xs = [p[kind]["clean_acc"] for p in r["path"]]
            ys = [p[kind][pgd] for p in r["path"]]
            label = f"seed {r['seed']}, {'re-estimated' if kind == 'reestimated' else 'stored'} statistics"
            ax.plot(xs, ys, style, marker="o", ms=3, color=colour, label=label)
            for p, x, y in zip(r["path"], xs, ys):
                if kind == "reestimated" and p["natural_weight"] in (0.0, 0.6, 1.0):
                    ax.annotate(f"w={p['natural_weight']:.1f}", (x, y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
        ref = r["pgd_at"]["shipped"]
        ax.plot([ref["clean_acc"]], [ref[pgd]], "*", ms=12, color=colour, label=f"PGD-AT seed {r['seed']}")
        ax.add_patch(plt.Rectangle((ref["clean_acc"] + 2, ref[pgd] - 1), 100, 100, color=colour, alpha=0.08))
    ax.set_xlabel("clean accuracy (%), validation")
    ax.set_ylabel("PGD-10 Linf accuracy (%), validation")
    cleans = [p[k]["clean_acc"] for r in results for p in r["path"] for k in ("stored", "reestimated")]
    robusts = [p[k][pgd] for r in results for p in r["path"] for k in ("stored", "reestimated")]
    cleans += [r["pgd_at"]["shipped"]["clean_acc"] for r in results]
    robusts += [r["pgd_at"]["shipped"][pgd] for r in results]
    ax.set_xlim(min(cleans) - 1, max(cleans) + 1)
    ax.set_ylim(max(0, min(robusts) - 2), max(robusts) + 2)  # the goal boxes are clipped to the data's range
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


MULTI_NORM = ("clean_acc", "pgd_acc_Linf", "pgd_acc_L2", "pgd_acc_union")


def weight_label(w: float) -> str:
    """0.0, 0.1, ..., 1.0 as the grid's rows have always read; an off-grid final weight (1/3) to 3 decimals."""
    return f"{w:.1f}" if round(w, 1) == w else f"{w:.3f}"


def write_table_mn(results: list[dict], command: str, pair: Pair = PAIRS["generalist-mn"]) -> str:
    """A multi-norm path (generalist-mn's or generalist-t's): clean, PGD Linf, PGD L2 and union, stored and
    re-estimated, against the recipe's baseline (MAX, AVG)."""
    final_w = "/".join(sorted({weight_label(r["final_weights"][pair.end]) for r in results}))
    label = pair.baseline_label
    mix = (f"w x {pair.end} + (1 - w) x {pair.start[0]}" if len(pair.start) == 1
           else f"w x {pair.end} + (1 - w) / {len(pair.start)} x ({' + '.join(pair.start)})")
    lines = [
        f"# The path between {pair.recipe}'s learners (converged -cpu scale)",
        "",
        f"Variant: `{pair.recipe}-cpu` / `{pair.baseline}-cpu` as trained for the converged multi-norm study (step"
        " clock, re-estimated statistics).",
        f"The path goes from {pair.description}. Each row: the learners' final EMA weights mixed,",
        f"{mix}, scored on the run's first {results[0]['points']} validation points: clean,"
        f" PGD-{results[0]['pgd_steps']} Linf (eps 8/255), PGD L2 (eps 0.5)",
        f"and their union (right clean and under both attacks), in %, {over_seeds(results)}.",
        "`stored`: running statistics interpolated like the weights; `re-estimated`: the run's rule",
        f"(generalist/bn_stats.py) with the shares set by w. "
        + (f"The global learner sits near the path's w = {final_w} point (its final {pair.end} weight);"
           if pair.through_global else "The global learner is not on this path (it gives every learner weight);"),
        f"its own rows are at the bottom. The line to reach: `{pair.recipe}` union >= {label}'s (the last column"
        f" checks each seed against its own {label}: yes when every seed reaches it"
        + (", then each seed's answer in brackets)." if len(results) > 1 else ")."),
        "",
        f"Command: `{command}`",
        "",
        f"| {pair.end} weight w | stored clean | stored Linf | stored L2 | stored union | re-est. clean | re-est. Linf "
        f"| re-est. L2 | re-est. union | union >= {label} (re-est.) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    reference = [r["baseline"]["shipped"] for r in results]

    def cells(scores: list[dict]) -> str:
        return " | ".join(fmt([s[k] for s in scores]) for k in MULTI_NORM)

    for i, w in enumerate(p[pair.weight_key] for p in results[0]["path"]):
        assert all(r["path"][i][pair.weight_key] == w for r in results)
        est = [r["path"][i]["reestimated"] for r in results]
        each = ["yes" if e["pgd_acc_union"] >= ref["pgd_acc_union"] else "no" for e, ref in zip(est, reference)]
        verdict = "yes" if all(a == "yes" for a in each) else "no"
        if len(each) > 1:  # a seed that reaches its baseline is worth seeing even when the other does not
            verdict += f" ({', '.join(each)})"
        lines.append(f"| {weight_label(w)} | {cells([r['path'][i]['stored'] for r in results])} | {cells(est)} | "
                     f"{verdict} |")
    blank = " | ".join([""] * len(MULTI_NORM))
    for who, key in ((f"{pair.recipe} final global", "global"), (f"{label} final global", "baseline")):
        lines += [f"| {who}, shipped (re-estimated) | {blank} | {cells([r[key]['shipped'] for r in results])} | |",
                  f"| {who}, stored statistics | {cells([r[key]['stored'] for r in results])} | {blank} | |"]
    if pair.through_global:
        lines += [
            "",
            f"How far the path's w = {final_w} point is from the global learner: the largest |path(w) - stored global|"
            f" over all entries is {max(r['stored_global_drift'] for r in results):.1e}; the largest"
            " |path(w) re-estimated - final/global.pt| (statistics included) is "
            + (f"{max(shipped):.1e}." if (shipped := [p["shipped_max_abs_diff"] for r in results for p in r["path"]
                                                      if "shipped_max_abs_diff" in p])
               else "not measured (the final weight is not a point of the path's grid)."),
        ]
    lines += ["", f"![PGD Linf against PGD L2, and the union, along the path]({pair.name}.png)"]
    return "\n".join(lines) + "\n"


def plot_mn(results: list[dict], path: Path, pair: Pair = PAIRS["generalist-mn"]) -> None:
    """Left: PGD Linf against PGD L2 along the path, the baseline (MAX, AVG) as a star; right: the union against w,
    the baseline's as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    colours = ["tab:blue", "tab:orange", "tab:green"]
    for r, colour in zip(results, colours):
        weights = [p[pair.weight_key] for p in r["path"]]
        for kind, style in (("stored", ":"), ("reestimated", "-")):
            label = f"seed {r['seed']}, {'re-estimated' if kind == 'reestimated' else 'stored'} statistics"
            xs = [p[kind]["pgd_acc_Linf"] for p in r["path"]]
            ys = [p[kind]["pgd_acc_L2"] for p in r["path"]]
            left.plot(xs, ys, style, marker="o", ms=3, color=colour, label=label)
            right.plot(weights, [p[kind]["pgd_acc_union"] for p in r["path"]], style, marker="o", ms=3,
                       color=colour, label=label)
            if kind == "reestimated":
                for w, x, y in zip(weights, xs, ys):
                    if w in (0.0, 1.0) or (pair.through_global and w == r["final_weights"][pair.end]):
                        left.annotate(f"w={weight_label(w)}", (x, y), fontsize=7, xytext=(3, 3),
                                      textcoords="offset points")
        ref = r["baseline"]["shipped"]
        left.plot([ref["pgd_acc_Linf"]], [ref["pgd_acc_L2"]], "*", ms=12, color=colour,
                  label=f"{pair.baseline_label} seed {r['seed']}")
        right.axhline(ref["pgd_acc_union"], ls="--", color=colour, lw=1,
                      label=f"{pair.baseline_label} seed {r['seed']} union")
    steps = results[0]["pgd_steps"]
    left.set_xlabel(f"PGD-{steps} Linf accuracy (%), validation")
    left.set_ylabel(f"PGD-{steps} L2 accuracy (%), validation")
    left.set_title(f"the path from {pair.description}", fontsize=9)
    right.set_xlabel(f"{pair.end} weight w")
    right.set_ylabel("union accuracy (%), validation")
    right.set_title(f"union: right clean and under both PGD-{steps} attacks", fontsize=9)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=list(PAIRS), default="generalist-d",
                        help="the Generalist recipe whose learners the path joins (its baseline: pgd-at, max, avg)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "accuracy-cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    pair = PAIRS[args.recipe]
    torch.set_num_threads(1)
    out_json = args.out / f"{pair.name}.json"
    done = {r["seed"]: r for r in json.loads(out_json.read_text())} if out_json.exists() else {}
    missing = [run for seed in args.seeds if seed not in done
               for run in (args.runs / f"{pair.recipe}-seed{seed}", args.runs / f"{pair.baseline}-seed{seed}")
               if not (run / "checkpoints" / "last").is_dir() or not (run / "final" / "global.pt").is_file()]
    if missing:
        parser.error(f"no finished run with its checkpoints at {', '.join(map(str, missing))}: the path needs both "
                     "runs' folders (train them with benchmarks/accuracy/converged_seeds.sh; published results hold "
                     "no weights)")
    results = []
    for seed in args.seeds:
        if seed not in done:  # resumable: a finished seed is kept
            done[seed] = path_for_seed(args.runs, seed, pair)
            out_json.write_text(json.dumps(sorted(done.values(), key=lambda r: r["seed"]), indent=1))
        results.append(done[seed])
    command = ("nice -n 19 python benchmarks/accuracy/interpolation_path.py"
               + ("" if args.recipe == "generalist-d" else f" --recipe {args.recipe}")
               + " --seeds " + " ".join(map(str, args.seeds)))
    if pair.recipe == "generalist-d":
        (args.out / f"{pair.name}.md").write_text(write_table(results, command))
        plot(results, args.out / f"{pair.name}.png")
    else:
        (args.out / f"{pair.name}.md").write_text(write_table_mn(results, command, pair))
        plot_mn(results, args.out / f"{pair.name}.png", pair)
    print(f"wrote {args.out / (pair.name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
