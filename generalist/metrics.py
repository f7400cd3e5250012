"""Metrics of a run: rows streamed to JSON lines, tables in Parquet, and the progress line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from generalist.storage import Location, locate


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def _parse_jsonl(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return rows


def _parquet_bytes(rows: list[dict]) -> bytes:
    columns = sorted({k for r in rows for k in r})
    buffer = io.BytesIO()
    pq.write_table(pa.table({c: [r.get(c) for r in rows] for c in columns}), buffer)
    return buffer.getvalue()


class MetricsLog:
    """Append-only metric rows per table (`rounds`, `epochs`), mirrored to Parquet.

    On a local path rows go to `metrics/TABLE.jsonl` as they come (a crash loses nothing) and the whole table
    is rewritten to `metrics/TABLE.parquet` at each epoch end. Through a URI (object stores cannot append)
    the rows are kept in memory: `persist()` writes those since the last `flush()` to `metrics/TABLE.tail.jsonl`
    (one epoch's rows at most, rewritten whole; its first line names the `TABLE.jsonl` it extends) and
    `flush()` rewrites `TABLE.jsonl` and `TABLE.parquet` whole and drops the tail. Every row carries
    `global_step`; on resume, rows past the checkpoint's step are dropped, because the steps that made them
    are run again."""

    def __init__(self, run_dir: str | Path | Location):
        self.folder = locate(run_dir) / "metrics"
        # Through a URI: rows per table, how many of them TABLE.jsonl holds and its sha256, unsaved tables.
        self._tables: dict[str, list[dict]] | None = None
        self._flushed: dict[str, int] = {}
        self._base_sha: dict[str, str] = {}
        self._unsaved: set[str] = set()
        if self.folder.native:
            os.makedirs(self.folder.path, exist_ok=True)
        else:
            self._tables = {}
            names = {f.name.removesuffix(".tail.jsonl").removesuffix(".jsonl") for f in self.folder.children()
                     if f.name.endswith(".jsonl")}
            for table in sorted(names):
                self._load(table)

    def _path(self, table: str, suffix: str) -> Path:
        return Path(self.folder.path) / f"{table}.{suffix}"

    def _file(self, table: str, suffix: str) -> Location:
        return self.folder / f"{table}.{suffix}"

    def _load(self, table: str) -> None:
        base = self._file(table, "jsonl")
        base = base.read_bytes() if base.is_file() else b""
        rows = _parse_jsonl(base.decode())
        self._flushed[table], self._base_sha[table] = len(rows), hashlib.sha256(base).hexdigest()
        tail = self._file(table, "tail.jsonl")
        if tail.is_file():
            header, _, body = tail.read_text().partition("\n")
            if json.loads(header).get("extends_sha256") == self._base_sha[table]:  # else a flush made it stale
                rows += _parse_jsonl(body)
        self._tables[table] = rows

    def append(self, table: str, rows: list[dict]) -> None:
        if self._tables is not None:
            self._tables.setdefault(table, []).extend(rows)
            self._unsaved.add(table)
            return
        with open(self._path(table, "jsonl"), "a") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True) + "\n")

    def rows(self, table: str) -> list[dict]:
        if self._tables is not None:
            return list(self._tables.get(table, []))
        path = self._path(table, "jsonl")
        if not path.exists():
            return []
        return _parse_jsonl(path.read_text())

    def persist(self) -> None:
        """Save rows not yet in storage (a no-op on a local path, where `append` already wrote them)."""
        if self._tables is None:
            return
        for table in sorted(self._unsaved):
            header = json.dumps({"extends_sha256": self._base_sha.get(table, hashlib.sha256(b"").hexdigest())})
            self._file(table, "tail.jsonl").write_text(header + "\n" + _jsonl(self._tables[table][
                self._flushed.get(table, 0):]))
        self._unsaved.clear()

    def truncate_after(self, global_step: int) -> None:
        """Keep only rows made at or before `global_step` optimiser steps (the checkpoint's position)."""
        if self._tables is not None:
            for table, rows in self._tables.items():
                self._tables[table] = [r for r in rows if r["global_step"] <= global_step]
                self._write_whole(table)
            return
        for path in Path(self.folder.path).glob("*.jsonl"):
            kept = [r for r in self.rows(path.stem) if r["global_step"] <= global_step]
            path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
            self.flush(path.stem)

    def flush(self, table: str | None = None) -> None:
        if self._tables is not None:
            for name in [table] if table else list(self._tables):
                if name in self._tables:
                    self._write_whole(name)
            return
        tables = [table] if table else [p.stem for p in Path(self.folder.path).glob("*.jsonl")]
        for name in tables:
            rows = self.rows(name)
            if rows:
                columns = sorted({k for r in rows for k in r})
                data = {c: [r.get(c) for r in rows] for c in columns}
                pq.write_table(pa.table(data), self._path(name, "parquet"))

    def _write_whole(self, table: str) -> None:
        """Through a URI: TABLE.jsonl and TABLE.parquet from all rows, then the (now stale) tail goes."""
        rows = self._tables[table]
        base = _jsonl(rows).encode()
        self._file(table, "jsonl").write_bytes(base)
        if rows:
            self._file(table, "parquet").write_bytes(_parquet_bytes(rows))
        else:
            self._file(table, "parquet").delete()
        self._file(table, "tail.jsonl").delete()
        self._flushed[table], self._base_sha[table] = len(rows), hashlib.sha256(base).hexdigest()
        self._unsaved.discard(table)


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
