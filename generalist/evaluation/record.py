"""eval.json: the record of one evaluation (one RobustBench-shaped entry per threat, provenance) and its
printed summary."""

from __future__ import annotations

from pathlib import Path

from generalist.evaluation.block_attacks import BlockAttack
from generalist.evaluation.block_store import tensor_digest
from generalist.evaluation.model_loading import ModelSource
from generalist.evaluation.spec import EvalSpec


def eval_record(summary: dict, spec: EvalSpec, source: ModelSource, attacks: dict[str, list[BlockAttack]], *,
                seconds: float, metadata: dict, device: str, threads: int, shards: int, split_size: int) -> dict:
    """eval.json: every threat's numbers as a RobustBench model entry of its own, the union, and provenance.

    `threats[NORM]` holds threat NORM's entry: RobustBench's fields (name, dataset, architecture, threat_model,
    eps, clean_acc, autoattack_acc when AutoAttack ran, additional_data, number_forward_passes, n_examples) and
    ours (pgd_acc, robust_acc: the per-point worst case, counts, attacks, seconds). The top-level
    threat_model / eps / autoattack_acc repeat the first threat's entry, for readers that take one RobustBench
    entry per file. Accuracies are percent strings with two decimals, as RobustBench writes them; `counts`
    holds the exact integers they come from."""
    first = spec.threats[0].norm
    head = summary["threats"][first]
    run_name = Path(source.run_dir).name if source.run_dir else Path(source.checkpoint).stem
    config = source.config
    # What every threat's entry shares: one model, one set of points, one clean accuracy.
    model_fields = {"name": f"{run_name}/{source.name}", "dataset": source.dataset,
                    "architecture": source.architecture, "clean_acc": summary["clean_acc"],
                    "additional_data": False, "number_forward_passes": 1, "n_examples": summary["n_examples"]}
    threats = {}
    for t in spec.threats:
        entry = {**model_fields, **summary["threats"][t.norm]}
        entry["attacks"] = {a.key: a.describe() for a in attacks[t.norm]}
        threats[t.norm] = entry
    return {
        **model_fields,
        "threat_model": first,
        "eps": head["eps"],
        "autoattack_acc": head.get("autoattack_acc"),
        "points": f"the first {summary['n_examples']} of the {split_size} {source.dataset} test points",
        "standard_autoattack": spec.is_standard(),
        "union_acc": summary["union_acc"],
        "union_threats": [t.norm for t in spec.threats],
        "threats": threats,
        "counts": summary["counts"],
        "warnings": summary["warnings"],
        "seeds": [spec.seed],
        "model": {"learner": source.name, "checkpoint": source.checkpoint, "run_dir": source.run_dir,
                  "recipe": config.recipe if config else None, "train_seed": config.seed if config else None,
                  "weights_sha256": tensor_digest(source.model.state_dict()), "bn_stats": source.bn_stats},
        "eval": {**spec.to_dict(), "device": device, "threads": threads, "shards": shards,
                 "seconds": round(seconds, 2), "block_size": spec.batch_size},
        "metadata": metadata,
    }


def format_summary(record: dict) -> str:
    """A Markdown table of one eval.json: clean, per-threat PGD / AutoAttack / worst case, union."""
    lines = [f"{record['name']} ({record['architecture']}, {record['dataset']}, {record['n_examples']} points)",
             "| threat | eps | clean | PGD | AutoAttack | worst case |", "|---|---|---|---|---|---|"]
    for norm, entry in record["threats"].items():
        lines.append(f"| {norm} | {entry['eps']} | {record['clean_acc']} | {entry.get('pgd_acc', '-')} | "
                     f"{entry.get('autoattack_acc', '-')} | {entry['robust_acc']} |")
    lines.append(f"| union | | {record['clean_acc']} | | | {record['union_acc']} |")
    return "\n".join(lines)
