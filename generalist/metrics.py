"""Metrics of a run: rows streamed to JSON lines, tables in Parquet, and the progress line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class MetricsLog:
    """Append-only metric rows per table (`rounds`, `epochs`), mirrored to Parquet.

    Rows go to `metrics/TABLE.jsonl` as they come (a crash loses nothing) and the whole table is rewritten
    to `metrics/TABLE.parquet` at each epoch end. Every row carries `global_step`; on resume, rows past the
    checkpoint's step are dropped, because the steps that made them are run again."""

    def __init__(self, run_dir: Path):
        self.folder = Path(run_dir) / "metrics"
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, table: str, suffix: str) -> Path:
        return self.folder / f"{table}.{suffix}"

    def append(self, table: str, rows: list[dict]) -> None:
        with open(self._path(table, "jsonl"), "a") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True) + "\n")

    def rows(self, table: str) -> list[dict]:
        path = self._path(table, "jsonl")
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                continue
        return rows

    def truncate_after(self, global_step: int) -> None:
        """Keep only rows made at or before `global_step` optimiser steps (the checkpoint's position)."""
        for path in self.folder.glob("*.jsonl"):
            kept = [r for r in self.rows(path.stem) if r["global_step"] <= global_step]
            path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
            self.flush(path.stem)

    def flush(self, table: str | None = None) -> None:
        tables = [table] if table else [p.stem for p in self.folder.glob("*.jsonl")]
        for name in tables:
            rows = self.rows(name)
            if rows:
                columns = sorted({k for r in rows for k in r})
                data = {c: [r.get(c) for r in rows] for c in columns}
                pq.write_table(pa.table(data), self._path(name, "parquet"))


class Progress:
    """One status line per report: where the run is, how fast, and when it ends."""

    def __init__(self, total_steps: int, stream=None):
        self.total_steps = total_steps
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self.start_step = None

    def report(self, step: int, epoch: int, epochs: int, text: str) -> None:
        now = time.perf_counter()
        if self.start_step is None:
            self.start_step, self.start = step, now
            rate = 0.0
        else:
            rate = (step - self.start_step) / max(now - self.start, 1e-9)
        eta = (self.total_steps - step) / rate if rate > 0 else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "--:--:--"
        print(f"epoch {epoch}/{epochs} step {step}/{self.total_steps} {rate:5.2f} steps/s ETA {eta_text} | {text}",
              file=self.stream, flush=True)
