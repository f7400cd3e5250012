#!/usr/bin/env bash
# The converged study's Generalist-D claim, more seeds: train generalist-d and pgd-at (-cpu recipes) for each
# seed given, both side by side at the lowest priority, then the four evaluations of each run (final and best
# global learner, statistics as shipped and as stored; standard AutoAttack Linf on the first 1,000 test points),
# then the tables over seeds 0 to that seed. Resumable: run it again to continue (the protocol resumes an
# interrupted training and skips finished evaluations).
#
#   GENERALIST_DATA=/path/to/data bash benchmarks/accuracy/converged_seeds.sh 1 2     # seeds 1 and 2
#
# PYTHON: the interpreter of the project's environment (default: python).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
export PYTHONPATH=$PWD RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
evaluate() {  # RECIPE SEED CHECKPOINT BN
  nice -n 19 "$PY" - "$@" <<'PYEOF'
import sys
sys.path.insert(0, "benchmarks/accuracy")
import protocol
from pathlib import Path
recipe, seed, checkpoint, bn = sys.argv[1:5]
protocol.eval_one(Path("runs/accuracy-cpu") / f"{recipe}-seed{seed}", 1000, ["Linf"], "standard", checkpoint, bn)
PYEOF
}
for seed in "$@"; do
  nice -n 19 "$PY" benchmarks/accuracy/protocol.py --scale cpu --phase train --recipes generalist-d pgd-at \
      --seeds "$seed" --jobs 2 --threats Linf
  for recipe in pgd-at generalist-d; do
    (evaluate "$recipe" "$seed" final auto; evaluate "$recipe" "$seed" best auto) &
    (evaluate "$recipe" "$seed" last saved; evaluate "$recipe" "$seed" best saved) &
    wait
  done
  # shellcheck disable=SC2046  # the seeds 0..seed, as separate words
  nice -n 19 "$PY" benchmarks/accuracy/protocol.py --scale cpu --phase table --recipes generalist-d pgd-at \
      --seeds $(seq -s ' ' 0 "$seed") --threats Linf
done
