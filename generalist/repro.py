"""Reproducibility: the determinism switch, thread counts and the metadata every result carries."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def set_determinism(enabled: bool, threads: int | None = None) -> None:
    """Deterministic kernels (bit-exact resume and backend parity) and a fixed intra-op thread count.

    The thread count is part of determinism on CPU: reductions split differently over more threads."""
    if threads is not None:
        torch.set_num_threads(threads)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from generalist.errors import ConfigError

        raise ConfigError("runtime.device=cuda but no CUDA GPU is visible; use runtime.device=cpu or auto")
    return torch.device(name)


def git_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_metadata(command: list[str] | None = None) -> dict:
    """How a result was made: code revision, versions, hardware, command line and time."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("torchvision", "numpy", "pyarrow", "ray", "pyautoattack"):
        try:  # package metadata, not an import: recording Ray's version must not import Ray
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "git": git_revision(),
        "versions": versions,
        "hardware": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "command": command if command is not None else sys.argv,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
