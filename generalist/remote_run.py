"""Run folders on remote storage for the commands that read them: a local mirror in, results back out.

`generalist eval` and `generalist report` read with local-file tools (torch.load, pyarrow.parquet,
matplotlib). A run folder given as a URI (s3://, gs://, hdfs://, file://; see generalist.storage) is first
copied into a local mirror, `$GENERALIST_CACHE/remote-runs/KEY` (default ~/.cache/generalist/remote-runs),
refreshed from the store on every use; an evaluation written into the mirror is then copied back to
`RUN/eval/NAME` on the store. Nothing on the store is deleted or overwritten except the evaluation folder
being written, which is what a local `generalist eval` does too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from generalist.errors import RunFolderError
from generalist.storage import Location, locate

# What a report never reads: weights, and the per-session folders Ray Train writes.
REPORT_SKIPS = ("checkpoints/", "ray-session-")


def mirror_root() -> Path:
    env = os.environ.get("GENERALIST_CACHE", "")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "generalist") / "remote-runs"


def mirror_path(uri: str) -> Path:
    """The local mirror of `uri`: KEY/NAME, one per URI, keeping the run's own folder name (reports name
    runs and their plots after it)."""
    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:12]
    return mirror_root() / key / (locate(uri).name or "run")


def fetch(uri: str, skip: Callable[[str], bool] = lambda relative: False) -> Path:
    """Copy the run folder at `uri` into its local mirror (files whose relative path `skip` accepts are left
    out) and return the mirror. RunFolderError if there is no run folder there."""
    source = locate(uri)
    if not (source / "config.json").is_file():
        raise RunFolderError(f"{uri} is not a run folder (no config.json there); give the folder `generalist "
                             "train --run-dir` wrote")
    target = mirror_path(uri)
    _copy_down(source, target, "", skip)
    return target


def _copy_down(folder: Location, target: Path, relative: str, skip: Callable[[str], bool]) -> None:
    for child in folder.children():
        rel = f"{relative}{child.name}"
        if child.is_dir():
            if not skip(rel + "/"):
                _copy_down(child, target / child.name, rel + "/", skip)
        elif not skip(rel):
            # A native location writes atomically: an interrupted refresh leaves whole files only.
            locate(str(target / child.name)).write_bytes(child.read_bytes())


def upload(local: Path, uri: str) -> None:
    """Copy the local folder `local` (recursively) to `uri`, file by file, each written whole."""
    target = locate(uri)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        (_join(target, path.relative_to(local).parts)).write_bytes(path.read_bytes())


def _join(location: Location, parts: tuple[str, ...]) -> Location:
    for part in parts:
        location = location / part
    return location


def skip_for_report(relative: str) -> bool:
    return relative.startswith(REPORT_SKIPS) or relative.endswith(".pt")


def skip_for_eval(relative: str) -> bool:
    """An evaluation needs the weights and config, and its own earlier state to resume; not Ray's sessions."""
    return relative.startswith("ray-session-")
