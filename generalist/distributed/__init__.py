"""Backends that run a group of base learners: in-process (`local`) or one Ray actor per learner (`ray`).

This package is the only place Ray is imported, and only by `ray_backend` (loaded on demand), so the
in-process backend works without Ray installed.
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

from generalist.config import RunConfig

if TYPE_CHECKING:
    from generalist.run_folder import Resume


def train(config: RunConfig, run_dir: str | Path, *, resume: bool | Resume = False,
                max_rounds: int | None = None,
          address: str | None = None, quiet: bool = False) -> dict:
    """Train `config` into `run_dir` on the configured backend; return the run summary."""
    if config.runtime.backend == "local":
        from generalist.distributed.local import train_local

        return train_local(config, run_dir, resume=resume, max_rounds=max_rounds, quiet=quiet)
    from generalist.distributed.ray_backend import train_ray

    return train_ray(config, run_dir, resume=resume, max_rounds=max_rounds, address=address, quiet=quiet)
