"""RobustBench model_info JSON files, one per evaluated threat, so a result can sit beside the leaderboard's.

RobustBench keeps one file per model and threat, `model_info/<dataset>/<threat_model>/<model>.json`; its
`benchmark(..., to_disk=True)` writes the fields of its `ModelInfo` (robustbench/utils.py) and leaves the
ones only an author knows (link, authors, venue, reported) as null. `generalist eval --model-info DIR` writes
the same layout and fields from each threat's entry of eval.json.
"""

from __future__ import annotations

import json
import re

from generalist.storage import locate

# RobustBench's ModelInfo fields for the Linf and L2 leaderboards, in its order (the corruption fields are
# left out: generalist evaluates no corruptions). Comparing with the leaderboard's files relies on every one
# of them being present, null where unknown.
ROBUSTBENCH_FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                      "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote")


def model_info(record: dict, norm: str) -> dict:
    """The RobustBench model_info entry of threat `norm` of an eval.json `record`.

    autoattack_acc is null when AutoAttack did not run; the footnote says which points were used and
    whether the AutoAttack was the standard one, since a leaderboard number is only comparable if it was."""
    entry = record["threats"][norm]
    known = {"name": entry["name"], "additional_data": entry["additional_data"],
             "number_forward_passes": entry["number_forward_passes"], "dataset": entry["dataset"],
             "architecture": entry["architecture"], "eps": entry["eps"], "clean_acc": entry["clean_acc"],
             "autoattack_acc": entry.get("autoattack_acc"), "footnote": _footnote(record, entry)}
    return {name: known.get(name) for name in ROBUSTBENCH_FIELDS}


def _footnote(record: dict, entry: dict) -> str:
    where = f"generalist eval: {entry['threat_model']} eps {entry['eps']} on {record['points']}, seed " \
            f"{record['seeds'][0]}"
    if "autoattack_acc" not in entry:
        return f"{where}; AutoAttack not run (PGD accuracy {entry.get('pgd_acc')})."
    if record["standard_autoattack"]:
        return f"{where}; standard AutoAttack (pyautoattack)."
    aa = entry.get("attacks", {}).get("aa", {})
    return (f"{where}; a non-standard AutoAttack ({', '.join(aa.get('attacks') or [])}, options "
            f"{aa.get('options') or {}}): not comparable with the leaderboard.")


def model_info_file_name(record: dict) -> str:
    """RUN_LEARNER.json: RobustBench names a file after its model, and a name must not hold a slash."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", record["name"]) + ".json"


def write_model_info(record: dict, folder: str) -> list[str]:
    """Write every threat's model_info to FOLDER/<dataset>/<threat_model>/RUN_LEARNER.json (a local path or
    a URI), replacing an earlier file of the same model and threat; returns the files written."""
    written = []
    for norm in record["threats"]:
        target = locate(folder) / record["dataset"] / norm / model_info_file_name(record)
        # RobustBench's own order and indent (its update_json: json.dumps(asdict(ModelInfo), indent=2)).
        target.write_text(json.dumps(model_info(record, norm), indent=2) + "\n")
        written.append(str(target))
    return written
