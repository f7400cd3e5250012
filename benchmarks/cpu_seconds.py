"""How much CPU a command costs, its Ray processes included: the figures behind the README's Tests section.

`time` and `getrusage` miss most of a Ray run's CPU: Ray's worker processes are reaped by their raylet (or by a
daemonised head node), never by the command, so their CPU time reaches no parent the command can ask. This script
counts from the machine instead (Linux):
- **machine**: the busy time of every core over the command's wall time (/proc/stat), less the CPU of processes
  that run beside it and are not part of it (`--exclude`, a regular expression on the command line: the accuracy
  study's trainings and evaluations, at `nice 19`). Exact for an otherwise idle machine; on a shared one, anything
  else that ran counts too, and so does an excluded process's CPU after its last sample, so it is an upper bound.
- **by process** (`--by-process`): every process seen while the command ran, grouped by its name (Ray's process
  titles: `ray::TrainController`, `ray::Coordinator`, ...). A process's CPU after its last sample is missed, so
  this is a lower bound that shows where the time goes.
Both come from a sampler that reads every /proc/PID/stat every `--interval` seconds, each process's own user and
system time (never its reaped children's: a parent's count jumps by a child's whole life when it reaps it, part of
which can lie before the command started).

    python benchmarks/cpu_seconds.py -- make test
    python benchmarks/cpu_seconds.py --exclude 'bin/generalist (train|eval)|accuracy/protocol.py' -- make test
    python benchmarks/cpu_seconds.py --by-process -- python -m pytest tests/ray/test_ray_faults.py
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def machine_busy_ticks() -> int:
    """Busy time of all cores since boot, in clock ticks (user, nice, system, irq, softirq, steal)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, (PROC / "stat").read_text().split()[1:9])
    return user + nice + system + irq + softirq + steal


def process_ticks(pid: int) -> int | None:
    """A process's own CPU time in clock ticks (user + system); None once it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    utime, stime = map(int, fields[11:13])  # fields 14 and 15 of proc(5), counted after pid and comm
    return utime + stime


def command_line(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def process_name(cmdline: str) -> str:
    """A group for a process: Ray's title (`ray::Name`, up to the first dot or space), else the program and, for
    Python, its script or module."""
    if cmdline.startswith("ray::"):
        return re.split(r"[ .]", cmdline, maxsplit=1)[0]
    words = cmdline.split()
    if not words:
        return "?"
    program = Path(words[0]).name
    if program.startswith("python") and len(words) > 1:
        script = words[2] if words[1] == "-m" and len(words) > 2 else words[1]
        return f"python {Path(script).name if '/' in script else script}"
    return program


class Sampler(threading.Thread):
    """Every `interval` seconds, the CPU ticks of every process since the start (or since it started), kept per
    pid as last seen: by name for the command's, apart for the excluded ones."""

    def __init__(self, interval: float, exclude: re.Pattern | None):
        super().__init__(daemon=True)
        self.interval, self.exclude = interval, exclude
        self.start_ticks = {pid: process_ticks(pid) or 0 for pid in pids()}  # what ran before counts from here
        self.last: dict[int, tuple[str, int]] = {}
        self.excluded: dict[int, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()
        self.sample()

    def sample(self) -> None:
        for pid in pids():
            ticks = process_ticks(pid)
            if ticks is None or pid == os.getpid():
                continue
            cmdline = command_line(pid)
            if pid in self.excluded or (self.exclude is not None and self.exclude.search(cmdline)):
                self.excluded[pid] = ticks - self.start_ticks.get(pid, 0)
                continue
            # A Ray worker is retitled as it goes (a Python script, then `ray::Actor`, `ray::IDLE` between tasks):
            # it is grouped under the last name that says what it did.
            name = process_name(cmdline)
            if pid in self.last and name in ("ray::IDLE", "?"):
                name = self.last[pid][0]
            self.last[pid] = (name, ticks - self.start_ticks.get(pid, 0))

    def by_name(self) -> list[tuple[str, int, float]]:
        """(name, processes, CPU seconds) with any CPU, most first."""
        seconds, count = defaultdict(float), defaultdict(int)
        for name, ticks in self.last.values():
            if ticks > 0:
                seconds[name] += ticks / TICK
                count[name] += 1
        return sorted(((n, count[n], s) for n, s in seconds.items()), key=lambda row: -row[2])


def measure(command: list[str], exclude: str | None = None, by_process: bool = False,
            interval: float = 0.2) -> dict:
    """Run `command`; its wall time, the machine's busy CPU over it, the excluded processes' share, and the rest
    (the command's), in seconds, with the command's exit status and, if asked, the CPU by process name."""
    sampler = Sampler(interval, re.compile(exclude) if exclude else None)
    sampler.start()
    busy0, start = machine_busy_ticks(), time.monotonic()
    returncode = subprocess.call(command)
    busy1, wall = machine_busy_ticks(), time.monotonic() - start
    sampler.done.set()
    sampler.join()
    excluded = sum(sampler.excluded.values()) / TICK
    machine = (busy1 - busy0) / TICK
    return {"command": command, "returncode": returncode, "wall_s": wall, "machine_cpu_s": machine,
            "excluded_cpu_s": excluded, "command_cpu_s": machine - excluded, "cores": os.cpu_count(),
            "by_process": sampler.by_name() if by_process else None}


def table(result: dict) -> str:
    lines = [f"Command: `{' '.join(result['command'])}` (exit {result['returncode']})", "",
             "| wall s | machine busy CPU-s | excluded CPU-s | command CPU-s | cores used of |",
             "|---|---|---|---|---|",
             f"| {result['wall_s']:.0f} | {result['machine_cpu_s']:.0f} | {result['excluded_cpu_s']:.0f} | "
             f"{result['command_cpu_s']:.0f} | {result['command_cpu_s'] / max(result['wall_s'], 1e-9):.2f} of "
             f"{result['cores']} |"]
    if result["by_process"] is not None:
        lines += ["", "| process | count | CPU-s (sampled) |", "|---|---|---|"]
        lines += [f"| `{name}` | {count} | {seconds:.1f} |" for name, count, seconds in result["by_process"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exclude", help="regular expression: processes beside the command, not counted")
    parser.add_argument("--by-process", action="store_true", help="also give the command's CPU by process name")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples of /proc")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, e.g. -- make test")
    if not (PROC / "stat").exists():
        parser.error("this script reads /proc (Linux)")
    try:
        re.compile(args.exclude or "")
    except re.error as error:
        parser.error(f"--exclude is not a regular expression: {error}")
    try:
        result = measure(command, args.exclude, args.by_process, args.interval)
    except FileNotFoundError:
        parser.error(f"no such command: {command[0]}")
    print(table(result), flush=True)
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
