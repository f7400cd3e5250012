"""Two Ray nodes on this machine (127.0.0.1): learners placed on different nodes (placement SPREAD), one node removed
mid-run as a lost machine would be; the run restarts from its last checkpoint and ends bit-identical to the
in-process backend, with the driver and the coordinator still there. In a subprocess of its own, since the
suite's other Ray tests share one local Ray per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # about 2 minutes on 2 cores: two raylets and a restarted worker group

SCRIPT = r'''
import json, os, sys, threading, time
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import ray
from ray.cluster_utils import Cluster
from conftest import assert_same_tensors, coordinator_handle, final_global, tiny_config
from generalist.distributed import train

from pathlib import Path
out = Path(sys.argv[2])
overrides = ("schedule.epochs=3", "runtime.checkpoint_every_rounds=3")
train(tiny_config("generalist-d-small", *overrides), out / "local", quiet=True)
# The driver connects while the head is the only node, so it attaches to the head's raylet (with several
# raylets on one IP it may pick any); the second node joins after, as a worker machine would.
cluster = Cluster(initialize_head=True, connect=True,
                  head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False})
second = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
report = {}

def remove_second_node_mid_run():
    coordinator = coordinator_handle(ray)
    while ray.get(coordinator.status.remote())["global_step"] < 7:  # status, not drain: the rows are the driver's
        time.sleep(0.05)
    report["learners_on_nodes"] = len({v["node"] for v in ray.get(coordinator.learners.remote()).values()})
    report["nodes_alive_before"] = sum(n["Alive"] for n in ray.nodes())
    report["coordinator_on_removed_node"] = ray.get(coordinator.status.remote())["node"] == second.node_id
    report["status_before"] = ray.get(coordinator.status.remote())
    cluster.remove_node(second)  # its raylet and every worker on it die, as with a lost machine

remover = threading.Thread(target=remove_second_node_mid_run)
remover.start()
summary = train(tiny_config("generalist-d-small", *overrides, "runtime.backend=ray", "runtime.placement=SPREAD",
                            "runtime.max_failures=3"), out / "ray", address=cluster.address, quiet=True)
remover.join()
assert_same_tensors(final_global(out / "local"), final_global(out / "ray"))
report["bit_identical"] = True
report["nodes_alive_after"] = sum(n["Alive"] for n in ray.nodes())
rows = [json.loads(l) for l in open(out / "ray" / "metrics" / "rounds.jsonl")]
report["rounds_logged"] = len({(r["learner"], r["global_step"]) for r in rows})
json.dump(report, open(out / "report.json", "w"))
ray.shutdown()
cluster.shutdown()
'''


def test_a_run_spread_over_two_nodes_survives_losing_one_and_ends_bit_identical(tmp_path, data_root):
    env = {**os.environ, "PYTHONPATH": str(REPO), "GENERALIST_TEST_DATA": str(data_root),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["learners_on_nodes"] == 2, report  # SPREAD: one learner on each node
    assert report["nodes_alive_before"] == 2 and report["nodes_alive_after"] == 1, report
    assert report["bit_identical"]
    assert not report["coordinator_on_removed_node"], report  # the control plane lives on the driver's node
    assert report["rounds_logged"] == 2 * 3 * 10, report  # every round of both learners once, none lost, none twice
