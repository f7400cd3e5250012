"""Finished blocks on disk and the key they were made under (model, points, spec), so a crashed
evaluation resumes and a state made from anything else is refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from generalist.data import TensorData
from generalist.errors import CheckpointError
from generalist.evaluation.spec import EvalSpec

STATE_FORMAT = 2  # of the per-block records under state_dir; part of the resume key


def tensor_digest(tensors: dict[str, torch.Tensor] | list[torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes: identifies a model or a set of points."""
    h = hashlib.sha256()
    items = tensors.items() if isinstance(tensors, dict) else enumerate(tensors)
    for name, t in items:
        t = t.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (BN counters) cannot be viewed as bytes
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class BlockStore:
    """Finished blocks on disk (`state_dir/blocks/START-NORM.json`), so a crashed evaluation resumes.

    `state_dir/spec.json` holds what the blocks were made from; a state made from another model, other
    points or another spec is refused rather than mixed in."""

    def __init__(self, state_dir: str | Path | None, fingerprint: dict) -> None:
        self.folder = Path(state_dir) if state_dir is not None else None
        if self.folder is None:
            return
        (self.folder / "blocks").mkdir(parents=True, exist_ok=True)
        spec_path = self.folder / "spec.json"
        if spec_path.exists():
            try:
                saved = json.loads(spec_path.read_text())
            except json.JSONDecodeError:
                saved = None
            if saved != json.loads(json.dumps(fingerprint)):
                raise CheckpointError(
                    f"{self.folder} holds an evaluation state of another model, points or settings; "
                    "pass --fresh to discard it, or choose another --out")
        else:
            from generalist.checkpoint import write_json_atomic

            write_json_atomic(spec_path, fingerprint)

    def _path(self, start: int, part: str) -> Path:
        assert self.folder is not None
        return self.folder / "blocks" / f"{start:08d}-{part}.json"

    def load(self, start: int, part: str) -> dict | None:
        if self.folder is None:
            return None
        path = self._path(start, part)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # not done, or cut by a crash: run it again

    def save(self, start: int, part: str, record: dict) -> None:
        if self.folder is not None:
            from generalist.checkpoint import write_json_atomic

            write_json_atomic(self._path(start, part), record)

    def done(self) -> int:
        return 0 if self.folder is None else len(list((self.folder / "blocks").glob("*.json")))


def fingerprint(model: nn.Module, points: TensorData, spec: EvalSpec) -> dict:
    """What an evaluation's numbers are a function of (model weights, points, spec): the resume key."""
    return {"state_format": STATE_FORMAT, "model_sha256": tensor_digest(model.state_dict()),
            "points_sha256": tensor_digest([points.x, points.y]), "spec": spec.to_dict()}
