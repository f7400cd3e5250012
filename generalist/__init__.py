"""Generalist++ adversarial training: base learners trained apart, interpolated into one global learner.

Where things are, by layer (lowest first; a module imports only from its own layer or lower ones, and
only `distributed/` knows Ray):

- errors.py: the errors the CLI reports in one line; config.py, threat.py: validated dataclasses, threat models.
- Core math and file formats: models/, attacks.py, losses.py, adversarial_points.py, objectives.py,
  baselines.py (the networks, PGD, the points a learner trains on, the objectives); data.py (datasets with
  checksums, the deterministic training stream); packed_state.py (a state in one buffer); performance.py,
  repro.py (bf16, channels-last, compile; determinism and run metadata); storage.py, checkpoint.py,
  remote_run.py (local or remote paths, tensors + JSON files, mirrors of remote runs); autoattack_eval.py.
- Training and evaluation, side by side: learner.py (one base learner, plain PyTorch), mixing.py (the global
  learner, interpolation schedule, redistribution), training.py (the loop every backend runs), records.py
  (what the loop records), recipes.py (named recipes); evaluation/ (`generalist eval`, a module per concern).
- Storage: run_folder.py, metrics.py, report.py (the run folder, its metric tables, reports read from it).
- Backends: distributed/ (the in-process backend and the Ray backend: learner actors, the collective mixing
  path, the coordinator, GPU placement, a retried local Ray start, sharded evaluation).
- CLI: cli.py, eval_cli.py (the `generalist` command).

Importing this package imports nothing else: `generalist config` and friends stay fast, and torch is loaded
only by the modules that need it.
"""
