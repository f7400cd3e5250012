"""Checkpoints as tensors + JSON: atomic writes, integrity checks, `weights_only=True` loads.

A checkpoint is a folder. Each payload `NAME.pt` (a dict of tensors, numbers and strings saved with
`torch.save`) has a sidecar `NAME.json` holding its sha256 and the run position, and the folder has a
`state.json` written last. Folders are written under a temporary name and renamed into place, so a crash
never leaves a half-written `last`; the previous `last` is kept until the new one is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from generalist.errors import CheckpointError

FORMAT_VERSION = 1


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to `path` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    _fsync_write(Path(tmp), (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
    os.replace(tmp, path)


def tensor_bytes(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(_to_cpu(payload), buffer)
    return buffer.getvalue()


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def write_payloads(folder: Path, payloads: dict[str, dict], meta: dict) -> None:
    """Write each payload as `NAME.pt` + `NAME.json` (sha256, meta) into an existing folder."""
    for name, payload in payloads.items():
        data = tensor_bytes(payload)
        _fsync_write(folder / f"{name}.pt", data)
        _fsync_write(folder / f"{name}.json",
                     json.dumps({"sha256": _sha256(data), "bytes": len(data), **meta}, sort_keys=True).encode())


def write_checkpoint(folder: Path, payloads: dict[str, dict], state: dict) -> None:
    """Atomically replace `folder` with a checkpoint of `payloads` and `state.json`."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        write_payloads(tmp, payloads, {"position": state.get("position")})
        _fsync_write(tmp / "state.json",
                     json.dumps({"format": FORMAT_VERSION, **state}, indent=2, sort_keys=True).encode())
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(new: Path, target: Path) -> None:
    """Rename `new` to `target`; an existing `target` survives as `.target.old` until the swap is done."""
    old = target.parent / f".{target.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(folder: Path) -> Path | None:
    """`folder`, or the previous copy a crash mid-swap left behind, or None."""
    folder = Path(folder)
    for candidate in (folder, folder.parent / f".{folder.name}.old"):
        if (candidate / "state.json").is_file():
            return candidate
    return None


def read_state(folder: Path) -> dict:
    path = Path(folder) / "state.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {folder} is not a complete checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is corrupt ({error}); restore it or start a new run folder") from None
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format')} is not {FORMAT_VERSION}")
    return state


def load_payload(folder: Path, name: str, map_location: str | torch.device = "cpu") -> dict:
    """Load `NAME.pt` after checking it against its sidecar sha256 (catches truncation and bit flips)."""
    folder = Path(folder)
    path, sidecar = folder / f"{name}.pt", folder / f"{name}.json"
    try:
        meta = json.loads(sidecar.read_text())
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise CheckpointError(f"checkpoint {folder} lacks {Path(error.filename).name}; it is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{sidecar} is corrupt; the checkpoint cannot be trusted") from None
    if len(data) != meta.get("bytes") or _sha256(data) != meta.get("sha256"):
        raise CheckpointError(
            f"{path} is corrupt or truncated ({len(data)} bytes, expected {meta.get('bytes')}; sha256 differs); "
            "resume from another checkpoint or start a new run folder")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"{path} cannot be loaded as tensors ({type(error).__name__}: {error})") from None


def load_state_dict_file(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a bare `.pt` of tensors (an exported model) with weights_only=True and a clear error."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a loadable tensor file ({type(error).__name__}: {error})") from None
