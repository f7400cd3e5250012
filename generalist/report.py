"""Reports over run folders: Markdown tables (mean +- std over seeds per recipe) and PNG plots.

Reads only what runs wrote: RUN/config.json, RUN/eval/*/eval.json (test-set evaluation by `generalist eval`),
RUN/metrics/epochs.parquet (per-epoch validation on held-out training points) and
RUN/metrics/rounds.parquet (training loss, mixing weight gamma and redistributions per round).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from generalist.errors import RunFolderError
from generalist.records import GLOBAL

NORM_ORDER = ("Linf", "L2", "L1")


@dataclass
class RunSummary:
    """What a report needs from one run folder."""

    path: Path
    name: str
    recipe: str
    seed: int
    learners: list[str]
    epochs: int
    mix_start: float  # fraction of training
    config_key: str = ""  # the config without seed, runtime, eval cadence and paths: runs that are seeds of one setting
    group: str = ""  # the recipe, plus " (variant k)" when runs of one recipe differ in more than the seed
    evals: dict[str, dict] = field(default_factory=dict)  # model -> eval.json
    epoch_rows: list[dict] = field(default_factory=list)
    round_rows: list[dict] = field(default_factory=list)
    shown: str = ""  # how the user named the run, where that is not `path` (a URI read through a local mirror)

    def last_validation(self) -> dict[str, dict]:
        """model -> the validation row of the last evaluated epoch."""
        last: dict[str, dict] = {}
        for row in self.epoch_rows:
            if row["model"] not in last or row["epoch"] >= last[row["model"]]["epoch"]:
                last[row["model"]] = row
        return last


def _read_parquet(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pydict()
    names = list(table)
    return [dict(zip(names, values)) for values in zip(*table.values())]


def load_run(path: str | Path, eval_folder: str = "*") -> RunSummary:
    """A run folder's config, evaluations and metrics; RunFolderError if it is not a run folder.

    `eval_folder` picks which RUN/eval/NAME/ folders count (a glob; several evaluation settings of one
    model would otherwise replace each other, the last by name winning)."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{path} has no config.json: it is not a run folder") from None
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path / 'config.json'} is corrupt: {error}") from None
    evals = {}
    for file in sorted((path / "eval").glob(f"{eval_folder}/eval.json")):
        try:
            record = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise RunFolderError(f"{file} is corrupt: {error}") from None
        evals[record.get("model", {}).get("learner", file.parent.name)] = record
    return RunSummary(path=path, name=path.name, recipe=config.get("recipe", "custom"), seed=config.get("seed", 0),
                      config_key=_config_key(config),
                      learners=[learner["name"] for learner in config.get("learners", [])],
                      epochs=config.get("schedule", {}).get("epochs", 0),
                      mix_start=config.get("mixing", {}).get("mix_start", 2 / 3), evals=evals,
                      epoch_rows=_read_parquet(path / "metrics" / "epochs.parquet"),
                      round_rows=_read_parquet(path / "metrics" / "rounds.parquet"))


def _config_key(config: dict) -> str:
    rest = {k: v for k, v in config.items() if k not in ("seed", "runtime", "eval")}
    rest["data"] = {k: v for k, v in rest.get("data", {}).items() if k != "root"}
    if rest["data"].get("augment") is None and "dataset" in rest["data"]:  # None means "on for CIFAR-10 only"
        rest["data"]["augment"] = rest["data"]["dataset"] == "cifar10"
    return json.dumps(rest, sort_keys=True)


def assign_groups(runs: list[RunSummary]) -> None:
    """Runs are seeds of one setting when their configs differ only in seed (and runtime / eval cadence).
    The group is the recipe name; a recipe run with several settings gets "(variant k)" per setting."""
    variants: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        if run.config_key not in variants[run.recipe]:
            variants[run.recipe].append(run.config_key)
    for run in runs:
        keys = variants[run.recipe]
        run.group = run.recipe if len(keys) == 1 else f"{run.recipe} (variant {keys.index(run.config_key) + 1})"


def config_difference(a: RunSummary, b: RunSummary) -> str:
    """The first config key where two variants differ, for the report's list of runs."""
    da, db = json.loads(a.config_key), json.loads(b.config_key)

    def walk(x, y, where):
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(set(x) | set(y)):
                found = walk(x.get(key), y.get(key), f"{where}.{key}" if where else key)
                if found:
                    return found
            return None
        if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y)):
                found = walk(u, v, f"{where}.{i}")
                if found:
                    return found
            return None
        return None if x == y else f"{where}={json.dumps(x)}"

    return walk(da, db, "") or ""


# --- numbers ------------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value: one seed has no spread)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def fmt(values: list[float], digits: int = 2) -> str:
    """mean ± std (the mean alone for one value, "-" for none)."""
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _eval_threats(runs: list[RunSummary]) -> list[str]:
    seen = {norm for run in runs for record in run.evals.values() for norm in record.get("threats", {})}
    return [n for n in NORM_ORDER if n in seen] + sorted(seen - set(NORM_ORDER))


def _model_order(run_models: list[str]) -> list[str]:
    return [GLOBAL] * (GLOBAL in run_models) + [m for m in run_models if m != GLOBAL]


def eval_table(runs: list[RunSummary]) -> str:
    """Test-set numbers from eval.json, one row per (recipe, model, evaluation settings), mean ± std over seeds.

    Each threat shows AutoAttack accuracy (PGD where AutoAttack was not run); `union` counts a point only if
    no attack under any threat fools it."""
    threats = _eval_threats(runs)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        for model in _model_order(list(run.evals)):
            record = run.evals[model]
            eps = ", ".join(f"{n} {e['eps']}" for n, e in record["threats"].items())
            kind = "standard AA" if record.get("standard_autoattack") else (
                "custom AA" if any("autoattack_acc" in e for e in record["threats"].values()) else "PGD only")
            groups[(run.group, model, record["n_examples"], kind, eps)].append(record)
    if not groups:
        return "(no eval.json in these runs: run `generalist eval RUN` first)"
    head = ["recipe", "model", "seeds", "points", "attacks", "clean"] + threats + ["union"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (recipe, model, n, kind, eps), records in groups.items():
        cells = [recipe, model, str(len(records)), str(n), kind, fmt([float(r["clean_acc"]) for r in records])]
        for norm in threats:
            values = []
            for r in records:
                entry = r["threats"].get(norm)
                if entry is not None:
                    values.append(float(entry.get("autoattack_acc") or entry.get("pgd_acc")))
            cells.append(fmt(values))
        cells.append(fmt([float(r["union_acc"]) for r in records]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def validation_table(runs: list[RunSummary]) -> str:
    """The last epoch's validation (PGD on held-out training points), mean ± std over seeds per recipe."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    metrics: list[str] = []
    for run in runs:
        last = run.last_validation()
        for model in _model_order(list(last)):
            row = last[model]
            groups[(run.group, model)].append(row)
            metrics += [k for k in row if k.startswith("pgd_acc_") and k not in metrics]
    if not groups:
        return "(no metrics/epochs.parquet in these runs)"
    metrics.sort(key=lambda k: NORM_ORDER.index(k[8:]) if k[8:] in NORM_ORDER else 99)
    head = ["recipe", "model", "seeds", "epoch", "clean"] + [f"PGD {m[8:]}" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (recipe, model), rows in groups.items():
        cells = [recipe, model, str(len(rows)), "/".join(sorted({str(r["epoch"]) for r in rows})),
                 fmt([100 * r["clean_acc"] for r in rows])]
        cells += [fmt([100 * r[m] for r in rows if r.get(m) is not None]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- plots --------------------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise RunFolderError("plots need matplotlib: pip install 'generalist[eval]'") from None

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def tradeoff_points(runs: list[RunSummary]) -> dict[str, dict[tuple[str, str], dict]]:
    """threat ("Linf", ..., "union") -> (recipe, model) -> {"clean": [...], "robust": [...], "source": str}.

    Test-set AutoAttack (else PGD) numbers from eval.json where a model was evaluated; otherwise the last
    epoch's validation PGD, marked as such (source "val PGD")."""
    out: dict[str, dict[tuple[str, str], dict]] = defaultdict(dict)
    for run in runs:
        last = run.last_validation()
        for model in _model_order(sorted(set(run.evals) | set(last))):
            record = run.evals.get(model)
            if record is not None:
                pairs = [(norm, float(e.get("autoattack_acc") or e.get("pgd_acc")),
                          "test AA" if e.get("autoattack_acc") else "test PGD")
                         for norm, e in record["threats"].items()]
                pairs.append(("union", float(record["union_acc"]), "test AA" if any(
                    e.get("autoattack_acc") for e in record["threats"].values()) else "test PGD"))
                clean = float(record["clean_acc"])
            else:
                row = last[model]
                pairs = [(k[8:], 100 * row[k], "val PGD") for k in row if k.startswith("pgd_acc_") and row[k] is not None]
                clean = 100 * row["clean_acc"]
            for norm, robust, source in pairs:
                slot = out[norm].setdefault((run.group, model), {"clean": [], "robust": [], "source": source})
                slot["clean"].append(clean)
                slot["robust"].append(robust)
                if slot["source"] != source:
                    slot["source"] = "mixed"
    return out


def plot_tradeoff(runs: list[RunSummary], path: Path) -> Path:
    """Clean vs robust accuracy, one panel per threat (and union), every model of every recipe.

    Filled markers: test-set numbers from eval.json; hollow: last-epoch validation PGD. Error bars: std over
    seeds; the global learner is a star."""
    plt = _pyplot()
    points = tradeoff_points(runs)
    panels = [n for n in (*NORM_ORDER, "union") if n in points] + sorted(set(points) - {*NORM_ORDER, "union"})
    if not panels:
        raise RunFolderError("nothing to plot: these runs have neither eval.json nor metrics/epochs.parquet")
    recipes = list(dict.fromkeys(run.group for run in runs))
    colors = {r: plt.get_cmap("tab10")(i % 10) for i, r in enumerate(recipes)}
    markers = ["s", "^", "D", "v", "P", "X", "h"]  # learners; "o" is kept for the source legend
    ncols = len(panels) if len(panels) <= 3 else 2
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(5.4 * ncols, 9.0), 4.4 * nrows + 0.6), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    learner_index: dict[str, int] = {}
    for ax, norm in zip(axes.flat, panels):
        labels: dict[tuple[float, float], list[str]] = defaultdict(list)
        for (recipe, model), slot in points[norm].items():
            marker = "*" if model == GLOBAL else markers[learner_index.setdefault(model, len(learner_index)) % 7]
            rx, sx = mean_std(slot["robust"])
            cy, sy = mean_std(slot["clean"])
            filled = slot["source"].startswith("test")
            ax.errorbar(rx, cy, xerr=sx, yerr=sy, fmt=marker, color=colors[recipe], ms=14 if model == GLOBAL else 8,
                        mfc=colors[recipe] if filled else "white", mec=colors[recipe], capsize=3, lw=1,
                        alpha=0.9, zorder=3 if model == GLOBAL else 2)
            labels[(round(rx, 2), round(cy, 2), recipe)].append(model)
        _annotate(ax, labels)
        sources = sorted({s["source"] for s in points[norm].values()})
        ax.set_title(f"{norm}" + ("" if norm == "union" else f" ({', '.join(sources)})"), fontsize=10)
        ax.set_xlabel(f"robust accuracy (%) under {norm}" if norm != "union" else "union robust accuracy (%)")
        ax.set_ylabel("clean accuracy (%)")
        ax.grid(alpha=0.3)
        ax.margins(0.15)
    handles = [plt.Line2D([], [], color=colors[r], marker="s", ls="", label=r) for r in recipes]
    handles += [plt.Line2D([], [], color="gray", marker="*", ms=11, ls="", label="global learner")]
    handles += [plt.Line2D([], [], color="gray", marker=markers[i % 7], ls="", label=f"learner {name}")
                for name, i in learner_index.items()]
    handles += [
                plt.Line2D([], [], color="gray", marker="o", mfc="gray", ls="", label="filled: test set (eval.json)"),
                plt.Line2D([], [], color="gray", marker="o", mfc="white", ls="", label="hollow: validation PGD (last epoch)")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    fig.suptitle("clean vs robust accuracy (mean ± std over seeds)", fontsize=11)
    legend_rows = math.ceil(len(handles) / 4)
    fig.tight_layout(rect=(0, (0.05 + 0.045 * legend_rows) / nrows, 1, 1 - 0.05 / nrows))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _annotate(ax, labels: dict[tuple[float, float, str], list[str]]) -> None:
    """Model names beside their points, colour = group; models at one point share a label ("linf = global",
    as after a redistribution), and labels of nearby points are stacked instead of printed over each other."""
    ax.figure.canvas.draw()  # fixes the limits so distances can be judged in axis fractions
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    placed: list[tuple[float, float]] = []
    for (rx, cy, _group), names in sorted(labels.items()):
        fx, fy = (rx - x0) / ((x1 - x0) or 1), (cy - y0) / ((y1 - y0) or 1)
        near = sum(1 for px, py in placed if abs(px - fx) < 0.12 and abs(py - fy) < 0.06)
        placed.append((fx, fy))
        ax.annotate(" = ".join(names), (rx, cy), fontsize=8, xytext=(8, 4 - 11 * near), textcoords="offset points")


def schedule_marks(run: RunSummary) -> tuple[list[int], list[int], int]:
    """(epochs with a redistribution, communication epochs, steps per epoch) from the rounds table."""
    redistributed = sorted({r["epoch"] for r in run.round_rows if r.get("redistributed")})
    communication = sorted({r["epoch"] for r in run.round_rows if r.get("communication_epoch")})
    first_epoch = [r["global_step"] for r in run.epoch_rows if r["epoch"] == 1]
    if first_epoch:
        spe = max(first_epoch)
    else:
        spe = max([r["global_step"] for r in run.round_rows if r["epoch"] == 1] or [1])
    return redistributed, communication, max(spe, 1)


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(run: RunSummary, path: Path) -> Path:
    """Training curves of one run: loss per learner, validation clean and robust accuracy per model, and
    the mixing weight gamma per learner; redistributions shaded, the start of mixing dashed."""
    plt = _pyplot()
    redistributed, _communication, spe = schedule_marks(run)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.2))
    (ax_loss, ax_clean), (ax_robust, ax_gamma) = axes
    models = _model_order(list(dict.fromkeys(r["model"] for r in run.epoch_rows)))
    colors = {m: ("black" if m == GLOBAL else plt.get_cmap("tab10")(i % 10)) for i, m in enumerate(models + [
        l for l in run.learners if l not in models])}

    by_learner: dict[str, list[dict]] = defaultdict(list)
    for row in run.round_rows:
        by_learner[row["learner"]].append(row)
    for learner, rows in by_learner.items():
        rows.sort(key=lambda r: r["global_step"])
        x = [r["global_step"] / spe for r in rows]
        loss = [r["loss"] for r in rows]
        ax_loss.plot(x, loss, color=colors.get(learner), alpha=0.2, lw=0.6)
        ax_loss.plot(x, _smooth(loss, max(1, spe // 4)), color=colors.get(learner), lw=1.6, label=learner)
        ax_gamma.plot(x, [r["weight"] for r in rows], color=colors.get(learner), lw=1.8, label=f"gamma {learner}")
    ax_loss.set_ylabel("training loss (per round; line: running mean)")
    ax_gamma.set_ylabel("mixing weight gamma")
    ax_gamma.set_ylim(-0.05, 1.05)

    norms = sorted({k[8:] for r in run.epoch_rows for k in r if k.startswith("pgd_acc_")},
                   key=lambda n: NORM_ORDER.index(n) if n in NORM_ORDER else 99)
    styles = ["-", "--", ":", "-."]
    for model in models:
        rows = sorted((r for r in run.epoch_rows if r["model"] == model), key=lambda r: r["epoch"])
        x = [r["epoch"] for r in rows]
        width = 1.6 if model == GLOBAL else 2.8
        z = 5 if model == GLOBAL else 3  # the global learner on top: after a redistribution learners equal it
        ax_clean.plot(x, [100 * r["clean_acc"] for r in rows], marker="o", ms=3, lw=width, color=colors[model],
                      label=model, zorder=z)
        for k, norm in enumerate(norms):
            ys = [100 * r[f"pgd_acc_{norm}"] if r.get(f"pgd_acc_{norm}") is not None else math.nan for r in rows]
            ax_robust.plot(x, ys, ls=styles[k % 4], marker="o", ms=3, lw=width, color=colors[model],
                           label=f"{model} {norm}", zorder=z)
    ax_clean.set_ylabel("validation clean accuracy (%)")
    ax_robust.set_ylabel("validation PGD accuracy (%)")

    for ax in axes.flat:
        for e in redistributed:  # epoch e spans (e - 1, e] on the epoch axis
            ax.axvspan(e - 1, e, color="tab:orange", alpha=0.13, lw=0)
        if run.epochs:
            ax.axvline(run.mix_start * run.epochs, color="gray", ls="--", lw=1)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.set_xlim(0, max(run.epochs, 1))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{run.name}: {run.recipe}, seed {run.seed} — shaded: epochs with redistribution; "
                 "dashed: mixing starts (gamma leaves the anchor)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _variant_note(run: RunSummary, runs: list[RunSummary]) -> str:
    first = next(r for r in runs if r.recipe == run.recipe)
    if run.group == run.recipe or first.config_key == run.config_key:
        return ""
    return f" (differs from {first.group}: {config_difference(run, first)})"


# --- the whole report ------------------------------------------------------------------------------------


def write_report(run_paths: list[Path], out: Path, eval_folder: str = "*",
                 shown: list[str] | None = None) -> list[Path]:
    """report.md, tradeoff.png and curves-RUN.png (one per run with metrics) in `out`; returns the files.

    `shown`: the runs as the user named them, where that differs from the folders read (remote runs)."""
    runs = [load_run(p, eval_folder) for p in run_paths]
    for run, name in zip(runs, shown or []):
        run.shown = name
    assign_groups(runs)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):  # curves-NAME.png must not overwrite each other
        for i, run in enumerate(runs):
            run.name = f"{run.name}-{i}"
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_tradeoff(runs, out / "tradeoff.png")]
    for run in runs:
        if run.round_rows or run.epoch_rows:
            written.append(plot_curves(run, out / f"curves-{run.name}.png"))
    lines = ["# Report", "",
             "Runs (a group is a recipe; runs whose configs differ only in the seed are its seeds):", "",
             *[f"- `{r.shown or r.path}`: {r.group}, seed {r.seed}" + _variant_note(r, runs) for r in runs], "",
             "## Test set (eval.json)", "",
             ("Accuracy in %, mean ± std over seeds (sample std; one seed shows the mean only). Each threat "
              "column is AutoAttack accuracy (PGD where AutoAttack was not run); union counts a point only if no "
              "attack under any threat fools it."), "", eval_table(runs), "",
             "## Validation at the last epoch", "",
             "PGD on held-out training points (metrics/epochs.parquet), never the test set.", "",
             validation_table(runs), "", "## Plots", "", "![trade-off](tradeoff.png)", ""]
    lines += [f"![{p.stem}]({p.name})" for p in written[1:]]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return [report, *written]
