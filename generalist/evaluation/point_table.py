"""The per-point outcome table (one row per test point): built from block records, merged over shards,
summarised into accuracies, and kept as Parquet (points.parquet)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from generalist.data import TensorData
from generalist.evaluation.checks import EvaluationWarning
from generalist.evaluation.spec import EvalSpec


def point_table(points: TensorData, spec: EvalSpec, starts: list[int], records: dict[int, dict]) -> dict[str, list]:
    """Columns (one entry per point, in index order) from block records.

    index, label, clean_pred, clean_correct; per threat T and attack A (pgd, aa): T_A_pred (the model's
    prediction at the attack's point), T_A_correct (clean_correct and T_A_pred == label), T_A_norm (the
    perturbation's norm); T_aa_broken_by (the AutoAttack attack that reported success, "" if none);
    T_robust (no attack under T fools the point: the per-point worst case); T_fooled_by ("clean", the
    first attack whose point is misclassified, or ""); union_robust (robust under every threat)."""
    cols: dict[str, list] = {"index": [], "label": [], "clean_pred": [], "clean_correct": []}
    for start in sorted(starts):
        rec = records[start]
        labels = points.y[start:start + spec.batch_size].tolist()
        block_cols: dict[str, list] = {"index": list(range(start, start + len(labels))), "label": labels,
                                       "clean_pred": rec["clean"]["clean_pred"]}
        block_cols["clean_correct"] = [p == l for p, l in zip(block_cols["clean_pred"], labels)]
        union = list(block_cols["clean_correct"])
        for t in spec.threats:
            robust = list(block_cols["clean_correct"])
            fooled_by = ["" if c else "clean" for c in robust]
            for part in rec[t.norm]["attacks"]:
                key = part["key"]
                # Robust to this attack: right on the clean point and on the attack's point (AutoAttack's rule;
                # a perturbation that happens to fix a clean mistake does not count).
                correct = [c and p == l for c, p, l in zip(block_cols["clean_correct"], part["pred"], labels)]
                block_cols[f"{t.norm}_{key}_pred"] = part["pred"]
                block_cols[f"{t.norm}_{key}_correct"] = correct
                block_cols[f"{t.norm}_{key}_norm"] = part["norm"]
                if "broken_by" in part:
                    block_cols[f"{t.norm}_{key}_broken_by"] = part["broken_by"]
                for i, ok in enumerate(correct):
                    if not ok and robust[i]:
                        fooled_by[i] = (part.get("broken_by") or [""] * len(correct))[i] or key
                    robust[i] = robust[i] and ok
            block_cols[f"{t.norm}_robust"] = robust
            block_cols[f"{t.norm}_fooled_by"] = fooled_by
            union = [u and r for u, r in zip(union, robust)]
        block_cols["union_robust"] = union
        for name, values in block_cols.items():
            cols.setdefault(name, []).extend(values)
    return cols


def merge_tables(tables: list[dict[str, list]]) -> dict[str, list]:
    """Tables of disjoint blocks (shards) -> one table in index order."""
    tables = [t for t in tables if t["index"]]
    if not tables:
        return {}
    names = list(tables[0])
    rows = sorted((i, k, j) for k, t in enumerate(tables) for j, i in enumerate(t["index"]))
    if len({i for i, _, _ in rows}) != len(rows):
        raise ValueError("shards overlap: a point was evaluated twice")
    return {name: [tables[k][name][j] for _, k, j in rows] for name in names}


def _pct(count: int, n: int) -> str:
    return f"{100 * count / n:.2f}" if n else "nan"


def summarize(table: dict[str, list], spec: EvalSpec, *, notes: list[str] = (), warn: bool = True) -> dict:
    """Accuracies (percent strings, RobustBench style) and exact counts from the per-point table.

    Recounts everything from the table's recomputed predictions. Warns (EvaluationWarning) where PGD fools
    points AutoAttack did not (a sign of masking or a weak AutoAttack setting), where an attack reported a
    success the recomputed prediction does not confirm, and repeats the model's sanity warnings."""
    n = len(table["index"])
    clean = int(sum(table["clean_correct"]))
    out: dict[str, Any] = {"n_examples": n, "clean_acc": _pct(clean, n), "counts": {"clean": clean},
                           "threats": {}, "warnings": list(notes)}
    for t in spec.threats:
        entry: dict[str, Any] = {"threat_model": t.norm, "eps": t.eps_text, "eps_value": t.eps}
        counts: dict[str, Any] = {}
        for key, field_name in (("pgd", "pgd_acc"), ("aa", "autoattack_acc")):
            column = table.get(f"{t.norm}_{key}_correct")
            if column is not None:
                counts[field_name] = int(sum(column))
                entry[field_name] = _pct(counts[field_name], n)
        counts["robust"] = int(sum(table[f"{t.norm}_robust"]))
        entry["robust_acc"] = _pct(counts["robust"], n)
        if f"{t.norm}_aa_broken_by" in table:
            broken = table[f"{t.norm}_aa_broken_by"]
            counts["broken_by"] = {a: broken.count(a) for a in dict.fromkeys(b for b in broken if b)}
            aa_ok = table[f"{t.norm}_aa_correct"]
            unconfirmed = sum(1 for b, ok in zip(broken, aa_ok) if b and ok)
            if unconfirmed:
                out["warnings"].append(f"{t.norm}: AutoAttack reported {unconfirmed} points fooled that the "
                                       "recomputed prediction calls correct (counted as robust)")
            if f"{t.norm}_pgd_correct" in table:
                beats = sum(1 for p, a in zip(table[f"{t.norm}_pgd_correct"], aa_ok) if a and not p)
                counts["pgd_beats_autoattack"] = beats
                if beats:
                    out["warnings"].append(
                        f"{t.norm}: PGD fools {beats} of {n} points that AutoAttack does not; AutoAttack should "
                        "be the stronger attack, so this suggests gradient masking or a weakened AutoAttack")
        fooled = table[f"{t.norm}_fooled_by"]
        counts["fooled_by"] = {k: fooled.count(k) for k in dict.fromkeys(f for f in fooled if f)}
        entry["counts"] = counts
        out["threats"][t.norm] = entry
    union = int(sum(table["union_robust"]))
    out["counts"]["union"] = union
    out["union_acc"] = _pct(union, n)
    if warn:
        for message in out["warnings"]:
            warnings.warn(message, EvaluationWarning, stacklevel=2)
    return out


def write_points_parquet(table: dict[str, list], path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """The per-point table as Parquet (one row per point), with constant columns from `extra`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(table.get("index", []))
    data = {name: values for name, values in table.items()}
    for name, value in (extra or {}).items():
        data[name] = [value] * n
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.table(data), tmp)
    tmp.replace(path)


def read_points_parquet(path: str | Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()
