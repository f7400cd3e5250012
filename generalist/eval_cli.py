"""The `generalist eval` and `generalist report` commands: arguments in, eval.json / Markdown / PNG out."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from generalist.errors import ConfigError


def register(subparsers) -> None:
    """Add `eval` and `report` to the `generalist` command's subparsers."""
    ev = subparsers.add_parser(
        "eval", help="clean, PGD and AutoAttack accuracy per threat and union; writes eval.json + points.parquet",
        description="Evaluate a run's global learner (or a base learner) on the test split: clean accuracy, "
                    "PGD-k and standard AutoAttack per threat, per-point worst case and union accuracy.")
    ev.add_argument("source", help="a run folder (a local path or a URI such as s3://bucket/run), a checkpoint "
                                   "folder, or a .pt state_dict (then --arch, --dataset)")
    ev.add_argument("--learner", default="global",
                    help="global (default), a base learner's name, or all (global and every learner)")
    ev.add_argument("--checkpoint", default="auto", choices=["auto", "final", "last", "best"],
                    help="which checkpoint of a run folder (auto: final/global.pt, else last)")
    ev.add_argument("--weights", default="model", choices=["model", "ema"],
                    help="a base learner's trained weights (model) or its EMA")
    ev.add_argument("--bn-stats", default="auto", choices=["auto", "saved", "reestimate"],
                    help="the global learner's BatchNorm statistics: saved (as the file holds them), reestimate "
                         "(recomputed now from the run's training data, on its learners' inputs by weight, "
                         "mixing.bn_batches batches), auto (default: reestimate where the run's config has "
                         "mixing.global_bn=reestimate, else saved)")
    ev.add_argument("--arch", help="architecture of a bare .pt (e.g. small-cnn)")
    ev.add_argument("--dataset", help="dataset of a bare .pt (cifar10, mnist, fashion-mnist)")
    ev.add_argument("--data-root", help="dataset folder (default: the run's data.root, else $GENERALIST_DATA)")
    ev.add_argument("--threat", action="append", metavar="NORM[=EPS]",
                    help="a threat to evaluate, repeatable: Linf, L2, L1 with an optional budget such as "
                         "Linf=8/255 (default: Linf=8/255, L2=0.5, L1=12)")
    ev.add_argument("--n", type=int, help="evaluate the first N test points (default: the whole test split)")
    ev.add_argument("--batch-size", type=int, default=250,
                    help="points per batch and per block (AutoAttack's batch; numbers depend on it, default 250)")
    ev.add_argument("--seed", type=int, default=0, help="seed of PGD starts and AutoAttack (default 0)")
    ev.add_argument("--pgd-steps", type=int, default=20, help="PGD steps per threat; 0 turns PGD off (default 20)")
    ev.add_argument("--pgd-restarts", type=int, default=1, help="PGD random restarts (default 1)")
    ev.add_argument("--pgd-step-fraction", type=float, default=0.25,
                    help="PGD step size as a fraction of eps (default 0.25: 2/255 at 8/255)")
    ev.add_argument("--autoattack", default="standard",
                    help="standard (APGD-CE, APGD-T, FAB-T, Square), none, or a comma list of pyautoattack "
                         "attacks such as apgd-ce,square (a custom, non-standard evaluation)")
    ev.add_argument("--aa-option", action="append", default=[], metavar="ATTACK.ATTR=VALUE",
                    help="tune pyautoattack (non-standard), e.g. apgd.n_iter=10, square.n_queries=100")
    ev.add_argument("--out", help="output folder, a local path or a URI (default: RUN/eval/LEARNER, or eval-NAME "
                                  "beside a bare .pt)")
    ev.add_argument("--model-info", metavar="DIR",
                    help="also write one RobustBench model_info JSON per threat to DIR/DATASET/THREAT/RUN_LEARNER.json "
                         "(RobustBench's fields and folder layout, to compare with the leaderboard's files; a local "
                         "path or a URI)")
    ev.add_argument("--fresh", action="store_true", help="discard finished blocks of an earlier identical run")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's default)")
    ev.add_argument("--shards", type=int, default=1,
                    help="split the blocks over this many Ray tasks (same numbers as one process)")
    ev.add_argument("--address", help="Ray cluster address for --shards (default: $RAY_ADDRESS, else a local Ray)")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(handler=run_eval)

    rp = subparsers.add_parser(
        "report", help="Markdown table (mean +- std over seeds per recipe) and PNG plots of runs",
        description="Summarise run folders: a Markdown table grouped by recipe, the clean/robust trade-off "
                    "and training curves as PNG.")
    rp.add_argument("runs", nargs="+", metavar="RUN", help="run folders (local paths or URIs such as s3://bucket/run)")
    rp.add_argument("--out", default="report", help="output folder (default: ./report)")
    rp.add_argument("--eval-folder", default="*",
                    help="which RUN/eval/NAME folders to read (a glob; default all, the last by name winning)")
    rp.set_defaults(handler=run_report)


def _spec(args):
    from generalist.evaluation.spec import EvalSpec
    from generalist.evaluation.threat_spec import DEFAULT_THREATS, ThreatSpec

    threats = [ThreatSpec.parse(t) for t in args.threat] if args.threat else list(DEFAULT_THREATS)
    options = {}
    for item in args.aa_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--aa-option {item!r} must look like apgd.n_iter=10")
        try:
            options[key.strip()] = int(value)
        except ValueError:
            raise ConfigError(f"--aa-option {item!r}: the value must be an integer") from None
    version, attacks = args.autoattack, None
    if version not in ("standard", "none"):
        version, attacks = "custom", [a.strip() for a in args.autoattack.split(",") if a.strip()]
    return EvalSpec(threats=threats, n=args.n, batch_size=args.batch_size, seed=args.seed,
                    pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts,
                    pgd_step_fraction=args.pgd_step_fraction, autoattack=version, aa_attacks=attacks,
                    aa_options=options)


def run_eval(args) -> int:
    import torch

    from generalist.data import load_split, resolve_data_root
    from generalist.evaluation.model_loading import load_model
    from generalist.repro import resolve_device

    spec = _spec(args)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.shards < 1:
        raise ConfigError(f"--shards must be >= 1, got {args.shards}")
    device = resolve_device(args.device)
    if args.model_info:
        from generalist.storage import locate

        locate(args.model_info)  # an unusable URI fails now, not after the evaluation
    remote = _Remote(args)  # a URI source or --out: read and write through local mirrors
    args.source, args.out = remote.local_source, remote.local_out
    first = load_model(args.source, learner="global" if args.learner == "all" else args.learner,
                       checkpoint=args.checkpoint, weights=args.weights, architecture=args.arch,
                       dataset=args.dataset)
    learners = [args.learner] if args.learner != "all" else (
        ["global"] + (first.config.learner_names if first.config else []))
    root = args.data_root or (first.config.data.root if first.config else None)
    test = load_split(first.dataset, resolve_data_root(root), train=False)
    if spec.n is not None and spec.n > len(test):
        raise ConfigError(f"--n {spec.n} is larger than the {len(test)} points of the {first.dataset} test split")
    for learner in learners:
        source = first if learner == first.name else load_model(
            args.source, learner=learner, checkpoint=args.checkpoint, weights=args.weights,
            architecture=args.arch, dataset=args.dataset)
        _set_bn_stats(source, args.bn_stats, root)
        out = _out_dir(args, source)
        record = evaluate_source(source, test, spec, out=out, device=device, fresh=args.fresh, shards=args.shards,
                                 address=args.address, quiet=args.quiet)
        written = remote.publish(out, record)
        if not args.quiet:
            from generalist.evaluation.record import format_summary

            print(format_summary(record))
        print(f"wrote {written}/eval.json and {written}/points.parquet ({record['eval']['seconds']:.0f} s)",
              flush=True)
        if args.model_info:
            from generalist.evaluation.model_info import write_model_info

            for path in write_model_info(record, args.model_info):
                print(f"wrote {path}", flush=True)
    return 0


def _set_bn_stats(source, choice: str, data_root: str | None) -> None:
    """Re-estimate the global learner's BatchNorm statistics in place where `choice` (or, for auto, the run's
    config) asks, exactly as training does for its evaluations and final/global.pt
    (generalist.training.reestimate_global_bn), at the clock epoch of the checkpoint's step; record what was
    done."""
    from dataclasses import replace

    from generalist import checkpoint as ckpt
    from generalist.mixing import clock_tick
    from generalist.training import prepare_run_data, reestimate_global_bn

    config = source.config
    wanted = choice == "reestimate" or (choice == "auto" and config is not None and source.name == "global"
                                        and config.mixing.global_bn == "reestimate")
    if not wanted:
        return
    if source.name != "global":
        raise ConfigError("--bn-stats reestimate applies to the global learner only (a base learner's statistics "
                          "are its own)")
    if config is None:
        raise ConfigError("--bn-stats reestimate needs a run folder (its config names the training data and the "
                          "learners whose inputs the statistics are estimated on)")
    config = replace(config, data=replace(config.data, root=data_root, download=False),
                     mixing=replace(config.mixing, global_bn="reestimate"))
    data = prepare_run_data(config)
    spe = data.stream.steps_per_epoch
    path = Path(source.checkpoint)
    # The clock epoch of the checkpoint's last step, where training scored (and shipped) it.
    steps = config.schedule.epochs * spe if path.parent.name == "final" else ckpt.read_state(path.parent)["global_step"]
    tick = clock_tick(config, max(steps, 1) - 1, spe)
    device = next(source.model.parameters()).device
    reestimate_global_bn(config, data, source.model, device, tick)  # in place; the model's mode is kept (eval)
    source.bn_stats = (f"re-estimated: {config.mixing.bn_batches} training batches shared by the learners' "
                       f"weights at clock epoch {tick} of {config.schedule.clock_length}")


class _Remote:
    """What `generalist eval` does for a run folder or an --out given as a URI: it reads the run from a local
    mirror, evaluates into the mirror (or a local staging folder for --out), and copies the evaluation
    folder back to the store, with the recorded paths pointing at the URI."""

    def __init__(self, args):
        from generalist import remote_run
        from generalist.storage import is_uri

        self.source_uri = args.source if is_uri(args.source) else None
        self.out_uri = args.out if args.out and is_uri(args.out) else None
        self.local_source = str(remote_run.fetch(args.source, remote_run.skip_for_eval)) if self.source_uri \
            else args.source
        self.local_out = str(remote_run.mirror_path(args.out)) if self.out_uri else args.out

    def publish(self, out: Path, record: dict) -> str:
        """Copy `out` to the store when it belongs there; returns where the evaluation now is."""
        from generalist import remote_run
        from generalist.checkpoint import write_json_atomic

        if self.out_uri:
            target = self.out_uri.rstrip("/") + str(out)[len(self.local_out):]
        elif self.source_uri and str(out).startswith(self.local_source):
            target = self.source_uri.rstrip("/") + str(out)[len(self.local_source):]
        else:
            return str(out)
        if self.source_uri:  # say where the model came from, not where this machine kept its copy
            for key in ("checkpoint", "run_dir"):
                value = record.get("model", {}).get(key)
                if isinstance(value, str) and value.startswith(self.local_source):
                    record["model"][key] = self.source_uri.rstrip("/") + value[len(self.local_source):]
            write_json_atomic(out / "eval.json", record)
        remote_run.upload(out, target)
        return target


def _out_dir(args, source) -> Path:
    if args.out:
        base = Path(args.out)
        return base / source.name if args.learner == "all" else base
    if source.run_dir:
        return Path(source.run_dir) / "eval" / source.name
    return Path(source.checkpoint).parent / f"eval-{Path(source.checkpoint).stem}"


def evaluate_source(source, test, spec, *, out: Path, device, fresh: bool = False, shards: int = 1,
                    address: str | None = None, quiet: bool = True, command: list[str] | None = None) -> dict:
    """Evaluate a loaded model, write out/eval.json and out/points.parquet, return the eval.json record.

    Finished blocks are kept in out/state/KEY (KEY from the model, the points and the spec), so running the
    same evaluation again after a crash resumes it."""
    import torch

    from generalist.checkpoint import write_json_atomic
    from generalist.data import TensorData
    from generalist.evaluation.block_attacks import build_attacks
    from generalist.evaluation.block_store import fingerprint
    from generalist.evaluation.point_table import summarize, write_points_parquet
    from generalist.evaluation.record import eval_record
    from generalist.evaluation.run import evaluate_points
    from generalist.repro import run_metadata

    n = len(test) if spec.n is None else spec.n
    points = TensorData(test.x[:n], test.y[:n])
    source.model.to(device)
    key = hashlib.sha256(json.dumps(fingerprint(source.model, points, spec), sort_keys=True).encode()).hexdigest()
    state_dir = out / "state" / key[:16]
    if fresh and state_dir.exists():
        shutil.rmtree(state_dir)
    log = (lambda message: None) if quiet else (lambda message: print(message, flush=True))
    started = time.perf_counter()
    if shards > 1 or address:
        from generalist.distributed.sharded_eval import evaluate_sharded

        results = evaluate_sharded(source.model.state_dict(), source.architecture, source.dataset, points, spec,
                                   shards=shards, state_dir=state_dir, address=address,
                                   threads=torch.get_num_threads(), device=str(device))
    else:
        results = evaluate_points(source.model, points, spec, device=device, state_dir=state_dir, log=log)
    seconds = time.perf_counter() - started
    summary = summarize(results.table, spec, notes=results.notes)
    for norm, per in results.seconds.items():
        summary["threats"][norm]["seconds"] = {k: round(v, 2) for k, v in per.items()}
    record = eval_record(summary, spec, source, build_attacks(spec, torch.device("cpu")), seconds=seconds,
                         metadata=run_metadata(command), device=str(device), threads=torch.get_num_threads(),
                         shards=shards, split_size=len(test))
    write_points_parquet(results.table, out / "points.parquet", {"model": source.name})
    write_json_atomic(out / "eval.json", record)
    return record


def run_report(args) -> int:
    from generalist import remote_run
    from generalist.report import write_report
    from generalist.storage import is_uri

    local = [remote_run.fetch(r, remote_run.skip_for_report) if is_uri(r) else Path(r) for r in args.runs]
    written = write_report(local, Path(args.out), args.eval_folder, shown=list(args.runs))
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover - `python -m generalist.eval_cli` is not an entry point
    sys.exit("run `generalist eval` or `generalist report`")
