"""benchmarks/cpu_seconds.py counts a command's CPU from the machine (its Ray processes, which no parent reaps,
included), leaves out the processes it is told run beside it, and groups what it samples by process name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_seconds.py"
BURN = "import time\nstart = time.process_time()\nwhile time.process_time() - start < {seconds}: pass\n"

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc (Linux)")


def test_a_commands_cpu_is_counted_and_grouped_by_process():
    cpu_seconds = load_script(SCRIPT, "cpu_seconds")
    result = cpu_seconds.measure([sys.executable, "-c", BURN.format(seconds=1.0)], by_process=True, interval=0.05)
    assert result["returncode"] == 0
    # At least the second of CPU the command burnt (other load on the machine can only add to it).
    assert result["command_cpu_s"] >= 0.9, result
    sampled = dict((name, seconds) for name, _, seconds in result["by_process"])
    assert sampled.get("python -c", 0) >= 0.5, result["by_process"]  # less what ran after its last sample
    assert "| command CPU-s |" in cpu_seconds.table(result)


def test_processes_beside_the_command_are_left_out():
    cpu_seconds = load_script(SCRIPT, "cpu_seconds")
    beside = subprocess.Popen([sys.executable, "-c", BURN.format(seconds=600), "study-beside-the-tests"])
    try:
        result = cpu_seconds.measure(["sleep", "1"], exclude="study-beside-the-tests", by_process=True)
    finally:
        beside.kill()
        beside.wait()
    assert result["excluded_cpu_s"] >= 0.5, result  # it burnt a core all through the second
    # Never more than the whole machine used (a parent's reaped children once counted with it, lives and all).
    assert result["excluded_cpu_s"] <= result["machine_cpu_s"] + 0.1, result
    assert not any(name == "python -c" for name, _, _ in result["by_process"]), result["by_process"]


@pytest.mark.parametrize("cmdline,name", [("ray::TrainController.run()", "ray::TrainController"),
                                          ("ray::Coordinator", "ray::Coordinator"),
                                          ("/venv/bin/python -m pytest -q tests", "python pytest"),
                                          ("/venv/bin/python3.11 /repo/benchmarks/epoch_time.py",
                                           "python epoch_time.py"),
                                          ("/usr/bin/sleep 1", "sleep"), ("", "?")])
def test_process_names_group_ray_titles_and_python_scripts(cmdline, name):
    assert load_script(SCRIPT, "cpu_seconds").process_name(cmdline) == name


@pytest.mark.parametrize("argv,says", [(["--", "no-such-command-here"], "no such command: no-such-command-here"),
                                       (["--exclude", "(", "--", "true"], "--exclude is not a regular expression"),
                                       ([], "give the command after --")])
def test_a_bad_command_line_is_one_error_that_says_what_to_fix(argv, says):
    done = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert says in done.stderr.splitlines()[-1]
