"""Generalist++ adversarial training: base learners trained apart, interpolated into one global learner.

Where things are (each module one concern; only `distributed/` knows Ray):

- config.py, recipes.py: validated dataclasses and the named recipes (`generalist recipes`).
- data.py, models/: datasets with checksums and the deterministic training stream; the networks.
- threat.py, attacks.py, losses.py, adversarial_points.py, objectives.py, baselines.py: threat models, PGD, the
  points a learner trains on, the training objectives; performance.py: bf16, channels-last, compile.
- learner.py: one base learner (its model, optimiser and objective), plain PyTorch.
- packed_state.py, mixing.py: a state in one buffer; the global learner, the interpolation schedule,
  redistribution.
- training.py: the loop every backend runs; checkpoint.py, run_folder.py, storage.py, metrics.py: what it writes;
  remote_run.py: local mirrors of run folders on remote storage, for eval and report.
- distributed/: the in-process backend and the Ray backend (learner actors, the collective mixing path, the
  coordinator, GPU placement, a retried local Ray start).
- evaluation/, autoattack_eval.py, report.py: PGD and AutoAttack evaluation, tables and plots.
- cli.py, eval_cli.py: the `generalist` command; errors.py: the errors it reports in one line.
- repro.py: determinism, thread counts, and the metadata (versions, git, hardware) every result carries.

Importing this package imports nothing else: `generalist config` and friends stay fast, and torch is loaded
only by the modules that need it.
"""
