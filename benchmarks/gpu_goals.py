"""The goals table of the GPU step (issue "The GPU step near the hardware limit"), read from the GPU check's parts.

`benchmarks/gpu_check.py` appends it to its results file, so that a lent machine's one run answers the issue's table
without anyone copying numbers by hand. Every cell is a number some part printed (or a ratio of two), and names
the part; a row whose parts did not run, or did not print it, reads "not measured". Rows:
- the Linf PGD training step (PGD-10 at paper scale) and the natural step (ms), eager (part b) and as a CUDA
  graph (part g), fp32;
- bf16 against fp32 (speed-up, > 1 is faster), eager and graph, from each part's "bf16 steps take X x" line;
- a `generalist-t` iteration in process (part d) against its learners' steps one after another (part b), and a
  round of its learners side by side with the step as a CUDA graph against their graph steps (part g's line);
- the Ray backend against in-process on the one device (part d's speed-up column).
"""

from __future__ import annotations

import re

GOALS = {"linf_ms": 20.0, "natural_ms": 4.0, "bf16": 1.3, "grouped": 0.7, "ray": 1.0}


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in `text` as rows keyed by its header. A row's leading empty cells continue the row
    above (epoch_time.py prints a recipe's second learner as `|  |  |  |  | natural | ...`). A table ends at an
    empty line or a `#` line; other lines between its rows (side_by_side.py's `placement:` notes) are passed over."""
    tables, lines = [], [line.strip() for line in text.splitlines()]
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]):
            header = [cell.strip() for cell in lines[i].strip("|").split("|")]
            rows, previous = [], {}
            i += 2
            while i < len(lines) and lines[i] and not lines[i].startswith("#"):
                if not lines[i].startswith("|"):  # side_by_side.py's `placement:` and `grouping:` notes, between rows
                    i += 1
                    continue
                cells = [cell.strip() for cell in lines[i].strip("|").split("|")]
                row = dict(zip(header, cells))
                for column in header:
                    if row.get(column):
                        break
                    row[column] = previous.get(column, "")  # a leading empty cell: the row above's
                rows.append(row)
                previous = row
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def rows_with(text: str, column: str) -> list[dict[str, str]]:
    return [row for table in markdown_tables(text) for row in table if column in row]


def step_ms(text: str, recipe: str, learner: str, precision: str = "fp32") -> float | None:
    """A learner's `s / step` in an epoch_time.py table, in ms."""
    for row in rows_with(text, "s / step"):
        if (row.get("recipe"), row.get("learner"), row.get("precision")) == (recipe, learner, precision):
            return 1000 * float(row["s / step"])
    return None


def bf16_speedup(text: str, recipe: str) -> float | None:
    """fp32 time / bf16 time from epoch_time.py's `# RECIPE: bf16 steps take X x the time of fp32 steps` line."""
    match = re.search(rf"^# {re.escape(recipe)}: bf16 steps take ([\d.]+) x", text, re.M)
    return 1 / float(match.group(1)) if match else None


def side_by_side(text: str, recipe: str, column: str) -> float | None:
    for row in rows_with(text, "speed-up (in-process / ray)"):
        if row.get("recipe") == recipe:
            return float(row[column])
    return None


def learners_of(text: str, recipe: str) -> list[float]:
    """Every learner's fp32 `s / step` of a recipe in an epoch_time.py table."""
    return [float(row["s / step"]) for row in rows_with(text, "s / step")
            if row.get("recipe") == recipe and row.get("precision") == "fp32"]


def side_by_side_round(text: str, recipe: str, precision: str = "fp32") -> float | None:
    """epoch_time.py's `# RECIPE PRECISION: a round of its K learners side by side takes T s, R x ...` line: R."""
    match = re.search(rf"^# {re.escape(recipe)} {precision}: a round of its \d+ learners side by side takes "
                      r"[\d.]+ s, ([\d.]+) x", text, re.M)
    return float(match.group(1)) if match else None


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "not measured" if value is None else f"{value:.{digits}f}{unit}"


def verdict(value: float | None, goal: float, at_most: bool) -> str:
    if value is None:
        return "-"
    return "met" if (value <= goal if at_most else value >= goal) else "**not met**"


def goals_table(outputs: dict[str, str], pgd: str, generalist_d: str, generalist_t: str) -> list[str]:
    """The goals section from the parts' outputs (key -> printed text; a part that did not run is absent).
    pgd, generalist_d, generalist_t: the recipes the parts ran (the paper-scale ones on a GPU, -small in a smoke)."""
    b, g, d = outputs.get("b", ""), outputs.get("g", ""), outputs.get("d", "")
    linf = step_ms(b, pgd, "linf"), step_ms(g, pgd, "linf")
    natural = step_ms(b, generalist_d, "natural"), step_ms(g, generalist_d, "natural")
    bf16 = bf16_speedup(b, pgd), bf16_speedup(g, pgd)
    in_process = side_by_side(d, generalist_t, "in-process s / iter")
    steps = learners_of(b, generalist_t)
    grouped = in_process / sum(steps) if in_process is not None and steps else None
    grouped_graph = side_by_side_round(g, generalist_t)
    ray = {recipe: side_by_side(d, recipe, "speed-up (in-process / ray)") for recipe in (generalist_d, generalist_t)}
    ray_cell = ", ".join(f"{recipe} {fmt(value, 2)}" for recipe, value in ray.items())
    ray_values = [v for v in ray.values() if v is not None]
    lines = [
        "## Goals of the GPU step (read from the parts above)", "",
        "| what | measured | goal | | from |", "|---|---|---|---|---|",
        f"| Linf PGD training step, {pgd}, fp32 (ms), eager / graph | {fmt(linf[0])} / {fmt(linf[1])} | "
        f"<= {GOALS['linf_ms']:g} | {verdict(min(filter(None, linf), default=None), GOALS['linf_ms'], True)} | b, g |",
        f"| natural step, {generalist_d}'s natural learner, fp32 (ms), eager / graph | {fmt(natural[0])} / "
        f"{fmt(natural[1])} | <= {GOALS['natural_ms']:g} | "
        f"{verdict(min(filter(None, natural), default=None), GOALS['natural_ms'], True)} | b, g |",
        f"| bf16 against fp32, {pgd} (speed-up), eager / graph | {fmt(bf16[0], 2)} / {fmt(bf16[1], 2)} | "
        f">= {GOALS['bf16']:g} | {verdict(max(filter(None, bf16), default=None), GOALS['bf16'], False)} | b, g |",
        f"| {generalist_t} iteration in process, against its learners' steps one after another, eager / graph "
        f"side by side | {fmt(grouped, 2)} / {fmt(grouped_graph, 2)} | <= {GOALS['grouped']:g} | "
        f"{verdict(min(filter(None, (grouped, grouped_graph)), default=None), GOALS['grouped'], True)} | d / b, g |",
        f"| Ray backend on the device, against in-process (speed-up) | {ray_cell} | >= {GOALS['ray']:g} | "
        f"{verdict(min(ray_values, default=None), GOALS['ray'], False)} | d |",
        "",
        "(The learner step on CPU against a bare PyTorch loop, the issue's last row, is a CPU benchmark: "
        "benchmarks/results/learner_throughput.md.)", ""]
    return lines
