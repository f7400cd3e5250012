"""Accuracy of a model: clean, PGD and AutoAttack per threat, worst case per point and union; checks first.

One concern per module; import a name from the module that owns it:

- threat_spec.py    a threat to evaluate (norm and eps) and eps as reports spell it ("8/255")
- spec.py           EvalSpec: which threats and attacks, how many points, seed and block size
- checks.py         every attack's points checked (eps-ball, [0, 1], finite); the model's sanity checks
- block_attacks.py  PGD and AutoAttack as run on one block of points, seeded by the block
- block_store.py    finished blocks on disk and the key they were made under, for resuming
- run.py            evaluate_points: every attack on every block; results merged over shards
- point_table.py    the per-point outcome table, its summary (accuracies, counts) and Parquet file
- model_loading.py  the model to evaluate from a run folder, a checkpoint folder or a bare .pt
- record.py         eval.json: one RobustBench-shaped entry per threat, provenance; the printed table
- model_info.py     RobustBench model_info JSON files, one per threat, from an eval.json record
- validation.py     the training loop's per-epoch clean and PGD accuracy
"""
