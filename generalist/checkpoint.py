"""Checkpoints as tensors + JSON: atomic writes, integrity checks, `weights_only=True` loads.

A checkpoint is a folder. Each payload `NAME.pt` (a dict of tensors, numbers and strings saved with
`torch.save`) has a sidecar `NAME.json` holding its sha256 and the run position, and the folder has a
`state.json` written last: a folder without it is not a checkpoint. On a local path folders are written
under a temporary name and renamed into place, so a crash never leaves a half-written `last`; the previous
`last` is kept until the new one is complete. Where there is no rename (a URI: object stores, see
`generalist.storage`), the new checkpoint is written complete beside the old one as `.NAME.new` and then
copied over it, `state.json` last both times, so one complete copy exists at every moment.
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
from generalist.storage import Location, give_umask_mode, locate

FORMAT_VERSION = 1


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_file(location: Location, data: bytes) -> None:
    """A file inside a folder that is not yet valid (no state.json), so it need not be atomic on its own."""
    if location.native:
        _fsync_write(Path(location.path), data)
    else:
        location.write_bytes(data)


def write_json_atomic(path: str | Path | Location, payload: Any) -> None:
    """Write JSON to `path`: through a temporary file and a rename on a local path, as one object on a URI."""
    locate(path).write_bytes((json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def tensor_bytes(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(_to_cpu(payload), buffer)
    return buffer.getvalue()


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu()
        # A view into a packed state buffer (generalist.packed_state) is saved as a tensor of its own: the file
        # then holds each tensor once, with its own dtype, not the whole buffer behind it.
        whole = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        return tensor if whole and tensor.is_contiguous() else tensor.clone(memory_format=torch.contiguous_format)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def write_payloads(folder: str | Path | Location, payloads: dict[str, dict], meta: dict) -> None:
    """Write each payload as `NAME.pt` + `NAME.json` (sha256, meta) into an existing folder."""
    folder = locate(folder)
    for name, payload in payloads.items():
        data = tensor_bytes(payload)
        _write_file(folder / f"{name}.pt", data)
        _write_file(folder / f"{name}.json",
                    json.dumps({"sha256": _sha256(data), "bytes": len(data), **meta}, sort_keys=True).encode())


def _state_bytes(state: dict) -> bytes:
    return json.dumps({"format": FORMAT_VERSION, **state}, indent=2, sort_keys=True).encode()


def _staged(folder: Location) -> Location:
    """Where a checkpoint is written complete before it is copied over `folder` (filesystems without rename)."""
    return folder.parent / f".{folder.name}.new"


def write_checkpoint(folder: str | Path | Location, payloads: dict[str, dict], state: dict) -> None:
    """Replace `folder` with a checkpoint of `payloads` and `state.json`; a crash at any point leaves a
    complete checkpoint (the old or the new one) for `find_checkpoint`."""
    folder = locate(folder)
    if not folder.native:
        _write_checkpoint_without_rename(folder, payloads, state)
        return
    target = Path(folder.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        give_umask_mode(tmp, 0o777)  # it becomes `target`: readable as any folder the user makes
        write_payloads(tmp, payloads, {"position": state.get("position")})
        _fsync_write(tmp / "state.json", _state_bytes(state))
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _staged(folder).delete()  # left by an interrupted write through a URI to this same folder, now older


def _write_checkpoint_without_rename(folder: Location, payloads: dict[str, dict], state: dict) -> None:
    staged = _staged(folder)
    if (staged / "state.json").is_file() and _step_or_minus_one(staged) > _step_or_minus_one(folder):
        _copy_checkpoint(staged, folder)  # a crash cut the last copy short: finish it before `staged` is reused
    staged.delete()
    write_payloads(staged, payloads, {"position": state.get("position")})
    (staged / "state.json").write_bytes(_state_bytes(state))
    _copy_checkpoint(staged, folder)
    staged.delete()


def _copy_checkpoint(source: Location, target: Location) -> None:
    """Make `target` a copy of the complete checkpoint `source`: invalid (no state.json) until the copy is whole."""
    (target / "state.json").delete()
    target.delete()
    for file in source.children():
        if file.name != "state.json":
            file.copy_to(target / file.name)
    (source / "state.json").copy_to(target / "state.json")


def replace_folder(new: Path, target: Path) -> None:
    """Rename `new` to `target`; an existing `target` survives as `.target.old` until the swap is done."""
    old = target.parent / f".{target.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def copies(folder: Location) -> list[Location]:
    """Where a checkpoint written to `folder` may be: `folder` itself, and the copy a crash mid-swap leaves
    (`.NAME.old` on a local path, `.NAME.new` through a URI). Whether they exist or not."""
    return [folder, folder.parent / f".{folder.name}.old", _staged(folder)]


def find_checkpoint(folder: str | Path | Location) -> Path | Location | None:
    """`folder`, or the other complete copy a crash mid-swap left behind (`.NAME.old` on a local path,
    `.NAME.new` through a URI), or None. A Path comes back for a path, a Location for a Location."""
    where = locate(folder)
    complete = [c for c in copies(where) if (c / "state.json").is_file()]
    if len(complete) > 1:  # only after a crash mid-swap: the newest wins, `folder` on a tie
        complete.sort(key=lambda c: -_step_or_minus_one(c))
    if not complete:
        return None
    return Path(str(complete[0])) if where.native and not isinstance(folder, Location) else complete[0]


def _step_or_minus_one(folder: Location) -> int:
    try:
        return read_state(folder)["global_step"]
    except CheckpointError:
        return -1


def read_state(folder: str | Path | Location) -> dict:
    path = locate(folder) / "state.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {folder} is not a complete checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is corrupt ({error}); restore it or start a new run folder") from None
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format')} is not {FORMAT_VERSION}")
    return state


def _checked_bytes(folder: Location, name: str) -> bytes:
    """The bytes of `NAME.pt`, after checking them against its sidecar; CheckpointError saying what is wrong."""
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
            f"{path} is corrupt or truncated ({len(data)} bytes, expected {meta.get('bytes')}; sha256 differs)")
    return data


def verify_payloads(folder: str | Path | Location, names: list[str]) -> None:
    """Check every `NAME.pt` of `names` against its sha256 without loading it; CheckpointError naming the
    first one missing, truncated or changed."""
    folder = locate(folder)
    for name in names:
        _checked_bytes(folder, name)


def load_payload(folder: str | Path | Location, name: str, map_location: str | torch.device = "cpu") -> dict:
    """Load `NAME.pt` after checking it against its sidecar sha256 (catches truncation and bit flips)."""
    folder = locate(folder)
    try:
        data = _checked_bytes(folder, name)
    except CheckpointError as error:
        raise CheckpointError(f"{error}; resume from another checkpoint (--resume-from STEP|PATH) or start a new "
                              "run folder") from None
    path = folder / f"{name}.pt"
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"{path} cannot be loaded as tensors ({type(error).__name__}: {error})") from None


def load_state_dict_file(path: str | Path | Location, map_location: str | torch.device = "cpu") -> dict:
    """Load a bare `.pt` of tensors (an exported model) with weights_only=True and a clear error."""
    try:
        if isinstance(path, Location) and not path.native:
            return torch.load(io.BytesIO(path.read_bytes()), map_location=map_location, weights_only=True)
        return torch.load(path.path if isinstance(path, Location) else path, map_location=map_location,
                          weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a loadable tensor file ({type(error).__name__}: {error})") from None
