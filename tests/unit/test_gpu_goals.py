"""The GPU check's goals table (benchmarks/gpu_goals.py) reads the numbers the parts printed: checked on the one
H100 run in the repository, whose figures the issue's "now" column quotes."""

from __future__ import annotations

from pathlib import Path

from conftest import load_script

REPO = Path(__file__).resolve().parents[2]
H100 = REPO / "benchmarks" / "results" / "gpu" / "nvidia-h100-80gb-hbm3.md"


def load_goals():
    return load_script(REPO / "benchmarks" / "gpu_goals.py", "gpu_goals")


def goal_rows(lines: list[str]) -> dict[str, list[str]]:
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    return {cells[0]: cells[1:] for cells in rows[1:]}


GROUPED = "generalist-t iteration in process, against its learners' steps one after another, eager / graph side by side"


def test_the_goals_of_the_h100_run_are_read_from_its_parts():
    goals = load_goals()
    text = H100.read_text()  # part b's table and the side-by-side of its second call
    rows = goal_rows(goals.goals_table({"b": text, "d": text}, "pgd-at", "generalist-d", "generalist-t"))
    linf = rows["Linf PGD training step, pgd-at, fp32 (ms), eager / graph"]
    assert linf == ["86.5 / not measured", "<= 20", "**not met**", "b, g"]
    assert rows["natural step, generalist-d's natural learner, fp32 (ms), eager / graph"][0] == "26.7 / not measured"
    assert rows["bf16 against fp32, pgd-at (speed-up), eager / graph"][:3] == ["0.80 / not measured", ">= 1.3",
                                                                               "**not met**"]
    # 0.1654 s in process against 0.1030 + 0.0213 + 0.0844 s of steps, one after another
    grouped = rows[GROUPED]
    assert grouped[:3] == ["0.79 / not measured", "<= 0.7", "**not met**"]
    assert rows["Ray backend on the device, against in-process (speed-up)"][:3] == [
        "generalist-d 0.57, generalist-t 0.52", ">= 1", "**not met**"]


def test_a_part_that_did_not_run_leaves_its_rows_not_measured_and_a_met_goal_says_so():
    goals = load_goals()
    graph = ("| recipe | precision | model | batch | learner | s / step | images / s |\n|---|---|---|---|---|---|---|\n"
             "| pgd-at | fp32 | resnet18 | 128 | linf | 0.0180 | 7111 |\n"
             "| generalist-d | fp32 | resnet18 | 128 | linf | 0.0190 | 6736 |\n"
             "|  |  |  |  | natural | 0.0035 | 36571 |\n"
             "# pgd-at: bf16 steps take 0.70 x the time of fp32 steps (summed over learners)\n"
             # epoch_time.py's line for a round side by side (bf16's first: the goal reads fp32's)
             "# generalist-t bf16: a round of its 3 learners side by side takes 0.0100 s, 0.40 x their steps one "
             "after another (run_round, learner streams on)\n"
             "# generalist-t fp32: a round of its 3 learners side by side takes 0.0210 s, 0.62 x their steps one "
             "after another (run_round, learner streams on)\n")
    rows = goal_rows(goals.goals_table({"g": graph}, "pgd-at", "generalist-d", "generalist-t"))
    linf = rows["Linf PGD training step, pgd-at, fp32 (ms), eager / graph"]
    assert linf[:3] == ["not measured / 18.0", "<= 20", "met"]
    assert rows["natural step, generalist-d's natural learner, fp32 (ms), eager / graph"][:3] == [
        "not measured / 3.5", "<= 4", "met"]
    assert rows["bf16 against fp32, pgd-at (speed-up), eager / graph"][:3] == ["not measured / 1.43", ">= 1.3", "met"]
    assert rows[GROUPED][:4] == ["not measured / 0.62", "<= 0.7", "met", "d / b, g"]
    assert rows["Ray backend on the device, against in-process (speed-up)"][2] == "-"


def test_side_by_side_notes_between_rows_do_not_end_its_table():
    side = ("# time per iteration, median of 3 after 1 warm-up\n"
            "| recipe | K | ray placement | in-process s / iter | ray s / iter | speed-up (in-process / ray) | goal |\n"
            "|---|---|---|---|---|---|---|\n"
            "placement: runtime.device=cpu: 2 learner(s) on CPUs, no GPU asked for\n"
            "grouping: one worker process per learner (2)\n"
            "| generalist-d-small | 2 | one CPU core per learner | 0.2970 | 0.2020 | 1.47 | - |\n"
            "# wall seconds of each whole run\n")
    assert load_goals().side_by_side(side, "generalist-d-small", "speed-up (in-process / ray)") == 1.47
