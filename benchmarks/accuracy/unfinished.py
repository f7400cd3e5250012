"""Carry the converged study's unfinished runs from one machine to the next, through the repository.

A `-cpu` run trains for about three hours and its four AutoAttack evaluations take as long again, while the
machines that run the study keep nothing but the repository between sessions. `save` packs each run folder
whose evaluations are not all published (runs/accuracy-cpu/NAME-seedS: its checkpoints, metrics, finished and
half-finished evaluations, and its logs) into benchmarks/accuracy/unfinished/NAME-seedS.tar.xz, to be committed;
`restore` unpacks them where no run folder is, and the protocol then resumes each one where it stopped (training
from its last checkpoint, AutoAttack from its last finished block of points). A run whose evaluations are all
published needs no archive: `save` removes it.

    python benchmarks/accuracy/unfinished.py stop       # before a session ends: stop the study, then save
    python benchmarks/accuracy/unfinished.py save       # the study already stopped; then commit unfinished/
    python benchmarks/accuracy/unfinished.py restore    # on a fresh checkout (converged_seeds.sh does it)

`stop` ends the study's processes on this machine that work on the run folders: its drivers first
(converged_seeds.sh, protocol.py), so that nothing new starts; each training right after its next checkpoint
(so the archive loses no steps; at most --wait-s seconds, then as it is, from its last checkpoint); every
AutoAttack evaluation at once (it resumes from its finished blocks of points); then it saves.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tarfile
import tempfile
import time
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


def study_processes(runs: Path) -> dict[str, list[tuple[int, Path | None]]]:
    """This machine's processes of the study on `runs`, by role: "driver" (converged_seeds.sh, or protocol.py
    whose run folders are `runs`), "train" (`generalist train --run-dir RUN`, with RUN) and "eval" (`generalist
    eval RUN`), RUN inside `runs`. Paths on a command line are read from that process's working directory; the
    processes of any other run folders are not the study's."""
    runs = runs.resolve()
    found: dict[str, list[tuple[int, Path | None]]] = {"driver": [], "train": [], "eval": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:  # gone, or not ours to read
            continue
        driver = driver_runs(argv, cwd)
        if driver is not None:
            if driver == runs:
                found["driver"].append((int(entry.name), None))
            continue
        program = next((i for i, a in enumerate(argv) if Path(a).name == "generalist"), None)
        if program is None or program + 1 >= len(argv) or argv[program + 1] not in ("train", "eval"):
            continue
        role, rest = argv[program + 1], argv[program + 2:]
        target = rest[rest.index("--run-dir") + 1] if role == "train" and "--run-dir" in rest[:-1] else \
            next((a for a in rest if not a.startswith("-")), None) if role == "eval" else None
        if target is not None and (cwd / target).resolve().parent == runs:
            found[role].append((int(entry.name), (cwd / target).resolve()))
    return found


def driver_runs(argv: list[str], cwd: Path) -> Path | None:
    """The run folders of a study driver's command line (None if it is not one): protocol.py's --runs, else its
    scale's folder in its checkout; converged_seeds.sh's is always runs/accuracy-cpu of its checkout."""
    script = next((a for a in argv if a.endswith(("accuracy/converged_seeds.sh", "accuracy/protocol.py"))), None)
    if script is None:
        return None
    repo = (cwd / script).resolve().parents[2]
    if script.endswith("converged_seeds.sh"):
        return repo / protocol.SCALES["cpu"]["runs"]
    if "--runs" in argv[:-1]:
        return (cwd / argv[argv.index("--runs") + 1]).resolve()
    scale = argv[argv.index("--scale") + 1] if "--scale" in argv[:-1] else "small"
    return repo / protocol.SCALES.get(scale, protocol.SCALES["small"])["runs"]


def checkpoint_step(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text()).get("global_step")
    except (OSError, ValueError):  # none yet, or being swapped this instant
        return None


def signal_all(pids, signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def stop(runs: Path, wait_s: float = 900.0, poll_s: float = 1.0) -> None:
    """Stop the study on `runs`: drivers at once, each training right after its next checkpoint (or at
    `wait_s`), evaluations at once; nothing of it is left running."""
    found = study_processes(runs)
    signal_all([pid for pid, _ in found["driver"]], signal.SIGKILL)  # first: no new training or evaluation starts
    signal_all([pid for pid, _ in found["eval"]], signal.SIGKILL)  # AutoAttack resumes from its finished blocks
    waiting = {pid: (run_dir, checkpoint_step(run_dir)) for pid, run_dir in found["train"]}
    for pid, (run_dir, step) in waiting.items():
        print(f"{run_dir.name}: last checkpoint at step {step}; waiting for its next (at most {wait_s:.0f} s)")
    deadline = time.monotonic() + wait_s
    while waiting and time.monotonic() < deadline:
        for pid, (run_dir, step) in list(waiting.items()):
            now = checkpoint_step(run_dir)
            if now is not None and now != step:
                signal_all([pid], signal.SIGSTOP)  # before it can start the next one
                print(f"{run_dir.name}: stopped right after its checkpoint at step {now}")
                del waiting[pid]
        time.sleep(poll_s)
    for pid, (run_dir, step) in waiting.items():
        print(f"{run_dir.name}: no new checkpoint in {wait_s:.0f} s; stopped, it resumes from step {step}")
    signal_all([pid for pid, _ in found["train"]], signal.SIGKILL)
    gone_by = time.monotonic() + 30
    for pid, _ in found["train"] + found["eval"]:  # gone (or a zombie) before the archive is read
        while process_state(pid) not in ("gone", "Z") and time.monotonic() < gone_by:
            time.sleep(0.05)


def process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["stop", "save", "restore"])
    parser.add_argument("--wait-s", type=float, default=900.0,
                        help="stop: the longest wait for a training's next checkpoint (default 900 s)")
    parser.add_argument("--runs", type=Path, default=RUNS, help="the run folders (default: runs/accuracy-cpu)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the published study (for save)")
    parser.add_argument("--archives", type=Path, default=ARCHIVES, help="where the archives are kept")
    args = parser.parse_args()
    if args.action in ("stop", "save"):
        if args.action == "stop":
            stop(args.runs, args.wait_s)
        save(args.runs, args.results, args.archives)
    else:
        restore(args.runs, args.archives)


if __name__ == "__main__":
    main()
