"""Carry the converged study's unfinished runs from one machine to the next, through the repository.

A `-cpu` run trains for about three hours and its four AutoAttack evaluations take as long again, while the
machines that run the study keep nothing but the repository between sessions. `save` packs each run folder
whose evaluations are not all published (runs/accuracy-cpu/NAME-seedS: its checkpoints, metrics, finished and
half-finished evaluations, and its logs) into benchmarks/accuracy/unfinished/NAME-seedS.tar.xz, to be committed;
`restore` unpacks them where no run folder is, and the protocol then resumes each one where it stopped (training
from its last checkpoint, AutoAttack from its last finished block of points). A run whose evaluations are all
published needs no archive: `save` removes it.

    python benchmarks/accuracy/unfinished.py save       # before a session ends, the study stopped; commit unfinished/
    python benchmarks/accuracy/unfinished.py restore    # on a fresh checkout (converged_seeds.sh does it)
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # noqa: E402 - this folder's modules, beside the script
import tables  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "runs" / "accuracy-cpu"
RESULTS = REPO / "benchmarks" / "results" / "accuracy" / "converged"
ARCHIVES = Path(__file__).resolve().parent / "unfinished"


def finished(run_dir: Path, results: Path) -> bool:
    """Whether every evaluation the protocol makes of this run is published: the final and best global learner,
    and both with their stored statistics where the run re-estimates them (protocol.evaluation_plan)."""
    config = run_dir / "config.json"
    if not (run_dir / "final" / "summary.json").is_file() or not config.is_file():
        return False
    kinds = ["final", "best"] + (["final-savedbn", "best-savedbn"] if protocol.reestimates_bn(run_dir) else [])
    published = results / "runs" / run_dir.name
    return all(tables.checkpoint_folders(published, kind) for kind in kinds)


def save(runs: Path, results: Path, archives: Path) -> list[Path]:
    """Pack every unfinished run folder (and its logs); remove the archives of runs now finished."""
    archives.mkdir(parents=True, exist_ok=True)
    written = []
    for run_dir in sorted(p for p in runs.glob("*-seed*") if p.is_dir()):
        archive = archives / f"{run_dir.name}.tar.xz"
        if finished(run_dir, results):
            archive.unlink(missing_ok=True)
            continue
        # Written beside the old archive and renamed over it: a save killed halfway leaves the previous one whole.
        with tempfile.NamedTemporaryFile(dir=archives, suffix=".partial", delete=False) as f:
            partial = Path(f.name)
        with tarfile.open(partial, "w:xz") as tar:
            for path in sorted(run_dir.rglob("*")):
                # Hidden parts are a checkpoint being written (.last.tmp-*) or the copy a swap keeps (.last.old).
                if path.is_file() and not any(part.startswith(".") for part in path.relative_to(runs).parts):
                    tar.add(path, arcname=str(path.relative_to(runs)))
            for log in sorted((runs / "logs").glob(f"{run_dir.name}.*log")):
                tar.add(log, arcname=str(log.relative_to(runs)))
        partial.chmod(0o644)  # a temporary file is the user's alone; the archive is for anyone with the checkout
        partial.replace(archive)
        written.append(archive)
        print(f"saved {run_dir.name}: {archive.stat().st_size / 2**20:.1f} MiB ({progress(run_dir)})")
    return written


def progress(run_dir: Path) -> str:
    """Where a run stands, for the log: its last checkpoint's step, and its finished evaluations."""
    state = run_dir / "checkpoints" / "last" / "state.json"
    step = json.loads(state.read_text()).get("global_step", "?") if state.is_file() else "none"
    evals = sorted(p.parent.name for p in (run_dir / "eval").glob("*/eval.json"))
    return f"last checkpoint at step {step}; evaluations finished: {', '.join(evals) or 'none'}"


def restore(runs: Path, archives: Path) -> list[Path]:
    """Unpack each archive whose run folder is not here (a run folder that is here is at least as far along:
    it is the one the archive was made from, or it was restored from it)."""
    restored = []
    for archive in sorted(archives.glob("*.tar.xz")):
        run_dir = runs / archive.name.removesuffix(".tar.xz")
        if run_dir.exists():
            print(f"{run_dir.name}: its run folder is here; {archive.name} left packed")
            continue
        runs.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:xz") as tar:
            tar.extractall(runs, filter="data")  # "data": no absolute paths, no links out of runs/
        restored.append(run_dir)
        print(f"restored {run_dir.name} ({progress(run_dir)})")
    return restored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["save", "restore"])
    parser.add_argument("--runs", type=Path, default=RUNS, help="the run folders (default: runs/accuracy-cpu)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the published study (for save)")
    parser.add_argument("--archives", type=Path, default=ARCHIVES, help="where the archives are kept")
    args = parser.parse_args()
    if args.action == "save":
        save(args.runs, args.results, args.archives)
    else:
        restore(args.runs, args.archives)


if __name__ == "__main__":
    main()
