"""Put the datasets of the jobs on the shared volume once, before the first job: download what is missing, verify.

    ray job submit --address "$RAY_ADDRESS" --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/prepare_data.py

Runs once on the head, so learners never download concurrently. A dataset already in the folder (torchvision's
layout or the offline one) is only verified; nothing is downloaded for it.
"""

from __future__ import annotations

import argparse
import sys

from generalist.data import load_split, resolve_data_root
from generalist.errors import GeneralistError


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", default=["cifar10"], help="dataset names (default: cifar10)")
    parser.add_argument("--data-root", help="dataset folder (default: $GENERALIST_DATA)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        root = resolve_data_root(args.data_root)
        for name in args.datasets:
            train = load_split(name, root, train=True, download=True)
            test = load_split(name, root, train=False, download=True)
            print(f"{name} in {root}: {len(train.y)} training and {len(test.y)} test images, verified", flush=True)
    except GeneralistError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
