"""The `generalist` command: train, resume, list recipes, show a config."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from generalist.config import RunConfig, apply_overrides
from generalist.errors import GeneralistError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="generalist", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a recipe into a run folder (or --resume one)")
    train.add_argument("--recipe", help="a recipe name (see `generalist recipes`)")
    train.add_argument("--run-dir", required=True, help="the run folder; must hold no checkpoint unless --resume")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --run-dir from its newest usable checkpoint (a broken newer one is "
                            "skipped and named)")
    train.add_argument("--resume-from", metavar="STEP|PATH",
                       help="continue from exactly this checkpoint: a global step of the run, or a checkpoint folder "
                            "(implies --resume)")
    train.add_argument("--restart-if-no-checkpoint", action="store_true",
                       help="with --resume: if the run folder holds no usable checkpoint, train it again from step 0 "
                            "with its config.json instead of stopping with an error")
    train.add_argument("--backend", choices=["ray", "local"], help="shortcut for runtime.backend=...")
    train.add_argument("--data-root", help="dataset folder (default: $GENERALIST_DATA)")
    train.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    train.add_argument("--seed", type=int, help="shortcut for seed=...")
    train.add_argument("--quiet", action="store_true")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. schedule.epochs=2")

    show = sub.add_parser("config", help="print the resolved config of a recipe with overrides, as JSON")
    show.add_argument("--recipe", required=True)
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    sub.add_parser("recipes", help="list the named recipes")
    _add_optional_commands(sub)
    debug = "show the Python traceback of a failure (by default a failure is one line `error: ...`)"
    parser.add_argument("--debug", action="store_true", help=debug)
    for command in sub.choices.values():  # `generalist train --debug ...` as well as `generalist --debug train ...`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    return parser


def _add_optional_commands(sub) -> None:
    """`eval` and `report` live in their own modules; they register here when present."""
    for module in ("generalist.eval_cli",):
        try:
            __import__(module, fromlist=["register"]).register(sub)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


def resolve_config(recipe: str | None, overrides: list[str], run_dir: str | Path | None = None,
                   resume: bool = False) -> RunConfig:
    from generalist.recipes import get_recipe
    from generalist.run_folder import RunFolder

    if resume and recipe is None:
        config = RunFolder(run_dir).load_config()
    elif recipe is None:
        raise GeneralistError("--recipe is required (see `generalist recipes`), or --resume an existing run")
    else:
        config = get_recipe(recipe)
    return apply_overrides(config, overrides)


def _train(args) -> int:
    from generalist.distributed import train
    from generalist.run_folder import Resume

    resume = None
    if args.resume or args.resume_from is not None:
        resume = Resume(source=args.resume_from, restart_if_no_checkpoint=args.restart_if_no_checkpoint)
    elif args.restart_if_no_checkpoint:
        raise GeneralistError("--restart-if-no-checkpoint goes with --resume (a new run starts from step 0 anyway)")
    overrides = list(args.overrides)
    if args.backend:
        overrides.append(f"runtime.backend={args.backend}")
    if args.data_root:
        overrides.append(f"data.root={json.dumps(str(Path(args.data_root).resolve()))}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    config = resolve_config(args.recipe, overrides, args.run_dir, resume is not None)  # a path or a URI
    train(config, args.run_dir, resume=resume, address=args.address or os.environ.get("RAY_ADDRESS"),
          quiet=args.quiet)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except GeneralistError as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `generalist recipes | head`: the reader left; nothing to report to anyone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 1
    except Exception as error:  # noqa: BLE001 - a bug or an environment problem we did not foresee
        if args.debug:
            raise
        # Still one line: what broke, and how to see where, so a bug report can start from it.
        print(f"error: unexpected {type(error).__name__}: {_one_line(error)}; run again with --debug for the "
              "traceback", file=sys.stderr)
        return 1


def _one_line(error: BaseException, limit: int = 400) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _run(args) -> int:
    if args.command == "train":
        return _train(args)
    if args.command == "config":
        print(resolve_config(args.recipe, args.overrides).to_json())
        return 0
    if args.command == "recipes":
        from generalist.recipes import get_recipe, recipe_names

        for name in recipe_names():
            config = get_recipe(name)
            learners = ", ".join(l.name for l in config.learners)
            print(f"{name:22s} {config.model.name:16s} {config.schedule.epochs:4d} epochs  learners: {learners}")
        return 0
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
