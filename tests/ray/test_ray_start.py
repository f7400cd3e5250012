"""Starting a local Ray under failure: a start that breaks half-way is retried, and one that never comes up
ends in one BackendError saying what to check, with nothing left running.

Each case runs in a fresh Python process (the session's `local_ray` may be up in this one), which starts a
real local Ray on 127.0.0.1 and reports, as JSON, what happened and which of its processes were still alive
at the end. A failure "half-way" is Ray's own: the node's GCS and raylet are started, then its startup raises
the error a loaded machine gave ("The current node timed out during startup"). About 40 s on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import ray
    import ray._private.node as node
    from generalist.distributed.ray_start import _descendants, start_local_ray
    from generalist.errors import BackendError

    failures = int(sys.argv[1])  # how many starts break half-way
    tries = []
    original = node.Node.start_ray_processes

    def start_then_time_out(self):
        original(self)  # GCS and raylet are running now
        tries.append(sorted(_descendants(os.getpid())))
        if len(tries) <= failures:
            raise Exception("The current node timed out during startup. This could happen because some of the "
                            "raylet failed to startup or the GCS has become overloaded.")

    node.Node.start_ray_processes = start_then_time_out
    report = {}
    try:
        start_local_ray({"num_cpus": 1, "include_dashboard": False, "log_to_driver": False,
                         "_node_ip_address": "127.0.0.1", "logging_level": "error"},
                        attempts=2, backoff_s=0.5)
        report["cpus"] = ray.cluster_resources().get("CPU")
        ray.shutdown()
    except BackendError as error:
        report["error"] = str(error)
    time.sleep(1)
    report["tries"] = len(tries)
    report["processes_per_try"] = [len(pids) for pids in tries]
    seen = set(_descendants(os.getpid())).union(*tries)  # by id, so one whose parent died is still counted
    report["left_running"] = sorted(pid for pid in seen if os.path.exists(f"/proc/{pid}")
                                    and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z")
    print("REPORT " + json.dumps(report))
""")


def start_with(failures: int) -> dict:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(failures)], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("REPORT "))


def test_a_local_ray_start_that_times_out_once_is_retried_and_its_processes_stopped():
    report = start_with(failures=1)

    assert report.get("error") is None and report["cpus"] == 1.0, report
    assert report["tries"] == 2
    assert min(report["processes_per_try"]) >= 2, "the failed try had not started Ray's processes: it tests nothing"
    assert report["left_running"] == [], "a Ray process outlived the run"


def test_a_local_ray_that_never_starts_is_one_error_saying_what_to_check_and_nothing_is_left_running():
    report = start_with(failures=2)

    error = report["error"]
    assert error.startswith("a local Ray did not start (2 tries") and "timed out during startup" in error, error
    assert "free memory" in error and "--address" in error and "\n" not in error
    assert report["left_running"] == [], "a half-started Ray's GCS or raylet was left running"
