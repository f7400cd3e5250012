"""What `ray job submit` runs: train one named recipe on the cluster at $RAY_ADDRESS.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/run_job.py --recipe generalist-d --runs-root /mnt/runs runtime.device=cuda

The run folder is RUNS_ROOT/RECIPE-seedS (or --run-name); an interrupted job continues with --resume.
"""

from __future__ import annotations

import argparse
import os
import sys

from generalist.cli import main as generalist_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--runs-root", required=True, help="folder (shared by all nodes) that holds run folders")
    parser.add_argument("--run-name", help="default: RECIPE-seedSEED")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", help="dataset folder on every node (default: $GENERALIST_DATA)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    run_dir = os.path.join(args.runs_root, args.run_name or f"{args.recipe}-seed{args.seed}")
    command = ["train", "--recipe", args.recipe, "--run-dir", run_dir, "--seed", str(args.seed), "--backend", "ray"]
    if args.data_root:
        command += ["--data-root", args.data_root]
    if args.resume:
        command.append("--resume")
    if not os.environ.get("RAY_ADDRESS"):
        print("error: RAY_ADDRESS is not set; `ray job submit` sets it, or export RAY_ADDRESS=HOST:6379",
              file=sys.stderr)
        return 2
    print(f"job: recipe {args.recipe}, run folder {run_dir}, cluster {os.environ['RAY_ADDRESS']}", flush=True)
    return generalist_main(command + list(args.overrides))


if __name__ == "__main__":
    sys.exit(main())
