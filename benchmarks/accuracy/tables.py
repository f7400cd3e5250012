"""The study's own tables and plot, built from run folders: the per-point worst case over every evaluation.

A run may be evaluated more than once (PGD-20 on three threats in `eval/aa-none/`, standard AutoAttack on
Linf alone in `eval/aa-standard-Linf/`, ...). `generalist report` shows one evaluation at a time; here the
evaluations of a run are combined point by point: a test point is robust under a threat only if it survived
every attack that any evaluation ran under that threat, and robust in the union only if it is robust under
every threat. That is the number AutoAttack's authors ask for (the worst case over attacks), and it is
never higher than any single evaluation's.
"""

from __future__ import annotations

import json
import statistics
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from generalist.report import fmt

THREATS = ("Linf", "L2", "L1")
GENERALIST = ("generalist-d", "generalist-mn", "generalist-t")


@dataclass
class Combined:
    """One run's evaluations, combined per point."""

    name: str  # NAME of runs/NAME-seedS
    seed: int
    n: int
    clean: float  # percent
    robust: dict[str, float] = field(default_factory=dict)  # threat or "union" -> percent
    attacks: dict[str, str] = field(default_factory=dict)  # threat -> "AA + PGD-20" or "PGD-20"
    train_seconds: float | None = None
    syncs: int | None = None
    sync_seconds: float | None = None
    # Column ("clean", a threat, "union") -> the test points correct or robust there; None where only the
    # evaluations' aggregates are left (published before per-point results were).
    points: dict[str, frozenset[int]] | None = field(default=None, compare=False, repr=False)


def evaluations(folder: Path) -> dict[str, tuple[Path, Path | None]]:
    """Every finished evaluation of a run, by tag: (its eval.json, its per-point results or None).

    Two layouts: a run folder's eval/TAG/eval.json + points.parquet, and the copy protocol.publish commits,
    eval-TAG.json + eval-TAG.points.parquet (copies published before 2026-12-06 have no points: their run folders
    were lost with the machine that trained them, so their tables are rebuilt from the JSON alone)."""
    found: dict[str, tuple[Path, Path | None]] = {
        p.parent.name: (p.parent / "eval.json", p) for p in (folder / "eval").glob("*/points.parquet")
        if (p.parent / "eval.json").is_file()}
    for record in folder.glob("eval-*.json"):
        points = record.with_name(record.stem + ".points.parquet")
        found.setdefault(record.stem[len("eval-"):], (record, points if points.is_file() else None))
    return found


def combine_run(run_dir: Path, name: str, seed: int, only: tuple[str, ...] | None = None) -> Combined | None:
    """None when the run has no finished evaluation yet. `only`: evaluation tags to use (e.g. ("aa-none",) so
    that every run of a table is measured by the same attacks); default all. `run_dir`: a run folder or its
    published copy."""
    evals = {tag: files for tag, files in sorted(evaluations(run_dir).items()) if only is None or tag in only}
    if not evals:
        return None
    if any(points is None for _, points in evals.values()):
        if len(evals) > 1:
            raise ValueError(f"{run_dir}: evaluations {', '.join(evals)} cannot be combined point by point: some "
                             "have no per-point results (publish them with points, or keep the run folder)")
        out = from_aggregates(json.loads(next(iter(evals.values()))[0].read_text()), name, seed)
    else:
        out = from_points([(json.loads(record.read_text()), points) for record, points in evals.values()], name,
                          seed)
    summary = next((s for s in (run_dir / "final" / "summary.json", run_dir / "summary.json") if s.is_file()), None)
    if summary is not None:
        out.train_seconds = json.loads(summary.read_text()).get("train_seconds_this_session")
    rounds = run_dir / "metrics" / "rounds.parquet"
    if rounds.exists():
        per_step = {r["global_step"]: r["sync_seconds"] or 0.0
                    for r in pq.read_table(rounds, columns=["global_step", "sync_seconds"]).to_pylist()}
        out.syncs, out.sync_seconds = len(per_step), sum(per_step.values())
    return out


def from_points(evals: list[tuple[dict, Path]], name: str, seed: int) -> Combined:
    """The per-point worst case over evaluations (eval.json record, points.parquet)."""
    robust: dict[str, dict[int, bool]] = defaultdict(dict)
    clean: dict[int, bool] = {}
    attacks: dict[str, set[str]] = defaultdict(set)
    for record, points in evals:
        rows = [r for r in pq.read_table(points).to_pylist() if r["model"] == "global"]
        for norm, entry in record["threats"].items():
            attacks[norm].add("PGD-20")
            if entry.get("autoattack_acc") is not None:
                attacks[norm].add("AA")
            for row in rows:
                robust[norm][row["index"]] = robust[norm].get(row["index"], True) and row[f"{norm}_robust"]
        for row in rows:
            clean[row["index"]] = row["clean_correct"]
    shared = set(clean)
    for flags in robust.values():
        shared &= set(flags)  # only points every threat was run on
    n = len(shared)
    out = Combined(name=name, seed=seed, n=n, clean=100 * sum(clean[i] for i in shared) / n)
    for norm in [t for t in THREATS if t in robust]:
        out.robust[norm] = 100 * sum(robust[norm][i] for i in shared) / n
        out.attacks[norm] = " + ".join(sorted(attacks[norm]))
    out.robust["union"] = 100 * sum(all(robust[t][i] for t in robust) for i in shared) / n
    out.points = {"clean": frozenset(i for i in shared if clean[i]),
                  **{norm: frozenset(i for i in shared if robust[norm][i]) for norm in robust},
                  "union": frozenset(i for i in shared if all(robust[t][i] for t in robust))}
    return out


def from_aggregates(record: dict, name: str, seed: int) -> Combined:
    """One evaluation's own numbers (eval.json): per threat the points robust to PGD-20 and, where it ran,
    AutoAttack (`robust_acc`), and the union over its threats. What from_points gives for that evaluation alone."""
    out = Combined(name=name, seed=seed, n=int(record["n_examples"]), clean=float(record["clean_acc"]))
    for norm in [t for t in THREATS if t in record["threats"]]:
        entry = record["threats"][norm]
        out.robust[norm] = float(entry["robust_acc"])
        out.attacks[norm] = "AA + PGD-20" if entry.get("autoattack_acc") is not None else "PGD-20"
    out.robust["union"] = float(record["union_acc"])
    return out


# Evaluation folder prefixes (protocol.eval_tag names them) -> which global learner they score: the final or
# best-on-validation one, with BatchNorm statistics as the run ships them (re-estimated where its config says so)
# or as its global EMA stored them ("savedbn": the final one is then read from checkpoints/last).
CHECKPOINT_PREFIXES = {"final": "", "best": "best-", "final-savedbn": "last-savedbn-", "best-savedbn": "best-savedbn-"}


def checkpoint_kind(folder_name: str) -> str:
    """Which CHECKPOINT_PREFIXES key an evaluation folder belongs to (the longest prefix that fits)."""
    return max((k for k, p in CHECKPOINT_PREFIXES.items() if folder_name.startswith(p)),
               key=lambda k: len(CHECKPOINT_PREFIXES[k]))


def checkpoint_folders(run_dir: Path, checkpoint: str) -> tuple[str, ...]:
    """The evaluation tags of one checkpoint (a CHECKPOINT_PREFIXES key) of a run or of its published copy, so
    that evaluations of different checkpoints, or of different statistics, are never combined."""
    return tuple(sorted(tag for tag in evaluations(run_dir) if checkpoint_kind(tag) == checkpoint))


def group(runs: list[Combined]) -> dict[str, list[Combined]]:
    groups: dict[str, list[Combined]] = defaultdict(list)
    for run in runs:
        groups[run.name].append(run)
    return groups


def _attack_label(runs: list[Combined], norm: str) -> str:
    labels = {r.attacks.get(norm, "-") for r in runs}
    return labels.pop() if len(labels) == 1 else "mixed: " + ", ".join(sorted(labels))


def accuracy_table(runs: list[Combined]) -> str:
    """Mean ± std over seeds of clean, per-threat and union accuracy; the attacks behind each threat column."""
    threats = [t for t in THREATS if any(t in r.robust for r in runs)]
    head = ["run", "seeds", "points", "clean", *threats, "union", "attacks per threat"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, members in group(runs).items():
        cells = [name, ",".join(str(r.seed) for r in members), ",".join(sorted({str(r.n) for r in members})),
                 fmt([r.clean for r in members])]
        cells += [fmt([r.robust[t] for r in members if t in r.robust]) for t in threats]
        cells.append(fmt([r.robust["union"] for r in members]))
        cells.append("; ".join(f"{t}: {_attack_label(members, t)}" for t in threats))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Which baselines each Generalist recipe's claim is against (PAPER.md): D against PGD-AT and TRADES on Linf,
# MN and T against AVG and MAX on the union.
CLAIMS = {"generalist-d": ("pgd-at", "trades"), "generalist-mn": ("avg", "max"), "generalist-t": ("avg", "max")}


def _claim_pairs(runs: list[Combined], claims: dict[str, tuple[str, ...]], usable=lambda run: True):
    """For each claim (Generalist recipe, baseline): its name, the baseline's, and their usable runs by seed."""
    by_name = group(runs)
    for generalist, baselines in claims.items():
        ours = {r.seed: r for r in by_name.get(generalist, []) if usable(r)}
        for baseline in baselines:
            yield generalist, baseline, ours, {r.seed: r for r in by_name.get(baseline, []) if usable(r)}


def _columns(runs: list[Combined]) -> list[str]:
    return ["clean", *[t for t in THREATS if any(t in r.robust for r in runs)], "union"]


def _markdown(head: list[str], rows: list[list[str]]) -> str | None:
    """A Markdown table, or None without rows."""
    if not rows:
        return None
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(cells) + " |" for cells in rows)])


def difference_table(runs: list[Combined], claims: dict[str, tuple[str, ...]] = CLAIMS) -> str | None:
    """Generalist minus baseline, paired by seed (the same seed draws the same validation split, initial
    weights and batch order), mean ± std over the shared seeds, and each seed's difference: how a difference
    compares with the seed-to-seed spread. None when no pair has a shared seed."""
    columns = _columns(runs)
    rows = []
    for generalist, baseline, ours, theirs in _claim_pairs(runs, claims):
        seeds = sorted(set(ours) & set(theirs))
        if not seeds:
            continue
        cells = [f"{generalist} - {baseline}", ",".join(map(str, seeds))]
        for column in columns:
            pairs = [(_value(ours[s], column), _value(theirs[s], column)) for s in seeds]
            deltas = [a - b for a, b in pairs if a is not None and b is not None]
            each = " (" + ", ".join(f"{d:+.1f}" for d in deltas) + ")" if len(deltas) > 1 else ""
            cells.append(fmt(deltas) + each if deltas else "-")
        rows.append(cells)
    return _markdown(["difference (points)", "seeds", *columns], rows)


def point_pairs_table(runs: list[Combined], claims: dict[str, tuple[str, ...]] = CLAIMS) -> str | None:
    """Generalist minus baseline seed by seed on the same test points, with the points that decide it: in
    brackets, how many are correct (or robust) in Generalist's model only and in the baseline's only. The paired
    standard error of a difference is about sqrt(only ours + only theirs) / n: how far one seed's difference is from
    noise on these points (not from seed to seed). None without per-point results for any pair."""
    columns = _columns(runs)
    rows = []
    for generalist, baseline, ours, theirs in _claim_pairs(runs, claims, lambda r: r.points is not None):
        for seed in sorted(set(ours) & set(theirs)):
            a, b = ours[seed], theirs[seed]
            if a.n != b.n:
                continue  # not the same test points
            cells = [f"{generalist} - {baseline}", str(seed)]
            for column in columns:
                if column not in a.points or column not in b.points:
                    cells.append("-")
                    continue
                only_a, only_b = len(a.points[column] - b.points[column]), len(b.points[column] - a.points[column])
                cells.append(f"{100 * (only_a - only_b) / a.n:+.1f} ({only_a} / {only_b})")
            rows.append(cells)
    return _markdown(["difference (points), paired by point", "seed", *columns], rows)


def _value(run: Combined, column: str) -> float | None:
    return run.clean if column == "clean" else run.robust.get(column)


def ablation_table(runs: list[Combined], changes: dict[str, str]) -> str:
    """accuracy_table's numbers plus what each variant changed and what it cost in time."""
    head = ["variant", "change", "seeds", "clean", "Linf", "L2", "union", "syncs", "sync s (total)", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, members in group(runs).items():
        cells = [name, changes.get(name, ""), ",".join(str(r.seed) for r in members), fmt([r.clean for r in members]),
                 fmt([r.robust["Linf"] for r in members if "Linf" in r.robust]),
                 fmt([r.robust["L2"] for r in members if "L2" in r.robust]),
                 fmt([r.robust["union"] for r in members]),
                 fmt([r.syncs for r in members if r.syncs is not None], 0),
                 fmt([r.sync_seconds for r in members if r.sync_seconds is not None], 2),
                 fmt([r.train_seconds for r in members if r.train_seconds is not None], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def identical_groups(runs: list[Combined]) -> list[list[str]]:
    """Names whose runs gave exactly the same numbers seed by seed, e.g. sync_every=100 and once per epoch
    when an epoch is shorter than 100 steps (every epoch end is a sync)."""
    by_numbers: dict[tuple, list[str]] = defaultdict(list)
    for name, members in group(runs).items():
        key = tuple(sorted((r.seed, r.clean, tuple(sorted(r.robust.items()))) for r in members))
        by_numbers[key].append(name)
    return [names for names in by_numbers.values() if len(names) > 1]


# The narrowest axis of a trade-off plot, in accuracy points: about three standard errors of an accuracy near 20-50 %
# on 1,000 test points, so that two runs within noise of each other are not drawn at opposite corners (one seed of
# two runs 0.1 points apart in clean accuracy once filled the whole height).
MIN_AXIS_SPAN = 4.0


def widened(low: float, high: float, span: float = MIN_AXIS_SPAN) -> tuple[float, float]:
    """Axis limits around [low, high], widened about their middle to at least `span`."""
    if high - low >= span:
        return low, high
    middle = (low + high) / 2
    return middle - span / 2, middle + span / 2


def plot_tradeoff(runs: list[Combined], path: Path, panels: list[str], title: str,
                  off_plot: tuple[str, ...] = ()) -> Path:
    """Clean vs robust accuracy per run name, mean ± std over seeds; Generalist variants are stars.

    Runs named in `off_plot` (natural training, far from the others) are left out so that the robust methods,
    which sit within a few points of each other, can be told apart; their numbers go in a note instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group(runs)
    notes = [f"{name} (off the plot): clean {statistics.fmean(r.clean for r in members):.1f}, "
             + ", ".join(f"{n} {statistics.fmean(r.robust[n] for r in members):.1f}" for n in panels)
             for name, members in groups.items() if name in off_plot]
    groups = {name: members for name, members in groups.items() if name not in off_plot}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels) + 2.2, 4.8), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, norm in zip(axes[0], panels):
        for i, (name, members) in enumerate(groups.items()):
            xs = [r.robust[norm] for r in members if norm in r.robust]
            if not xs:
                continue
            ys = [r.clean for r in members]
            x, y = statistics.fmean(xs), statistics.fmean(ys)
            star = name in GENERALIST or name.startswith("d-")
            ax.errorbar(x, y, xerr=statistics.stdev(xs) if len(xs) > 1 else None,
                        yerr=statistics.stdev(ys) if len(ys) > 1 else None, fmt="*" if star else "o",
                        ms=13 if star else 8, color=cmap(i % 10), capsize=3, lw=1, label=name)
        label = _attack_label([r for m in groups.values() for r in m], norm) if norm != "union" else "worst case"
        ax.set_xlabel(f"{norm} robust accuracy (%)  [{label}]")
        ax.set_ylabel("clean accuracy (%)")
        ax.set_title(norm, fontsize=10)
        ax.grid(alpha=0.3)
        ax.margins(0.12)
        ax.set_xlim(*widened(*ax.get_xlim()))
        ax.set_ylim(*widened(*ax.get_ylim()))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=9, frameon=False)
    # Wrapped to the figure's width (about 12 characters an inch at this size): a one-panel figure clipped it.
    lines = [title, "; ".join(notes)] if notes else [title]
    fig.suptitle("\n".join(textwrap.fill(line, int(fig.get_figwidth() * 12)) for line in lines), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
