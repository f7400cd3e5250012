#!/usr/bin/env bash
# The converged study, more seeds: train the recipes (-cpu; default generalist-d and pgd-at) for each seed given,
# side by side at the lowest priority, and each run's four evaluations as soon as its own training ends (final and
# best global learner, statistics as shipped and as stored; standard AutoAttack on the first 1,000 test points,
# Linf by default; two jobs at a time, seed by seed: a seed's trainings, then every final global learner before
# any best one, then the next seed), then the tables over seeds 0 to the last seed given. Resumable: run it again to continue (the protocol resumes an interrupted
# training and skips finished evaluations), on this machine or, through benchmarks/accuracy/unfinished.py, on another.
#
#   GENERALIST_DATA=/path/to/data bash benchmarks/accuracy/converged_seeds.sh 1 2     # seeds 1 and 2
#   RECIPES="generalist-mn max" THREATS="Linf L2" STUDY=study-multinorm bash benchmarks/accuracy/converged_seeds.sh 0
#
# PYTHON: the interpreter of the project's environment (default: python). RECIPES, THREATS: space-separated.
# STUDY: the name of the tables' file in benchmarks/results/accuracy/converged/ (default: study, the generalist-d
# study's). TABLE_RECIPES: the recipes of that table (default: RECIPES); a table is rewritten whole, so recipes
# trained in a later chain name the earlier ones too:
#   RECIPES="avg generalist-t" TABLE_RECIPES="generalist-mn max avg generalist-t" THREATS="Linf L2" \
#       STUDY=study-multinorm bash benchmarks/accuracy/converged_seeds.sh 0
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
read -r -a recipes <<< "${RECIPES:-generalist-d pgd-at}"
read -r -a threats <<< "${THREATS:-Linf}"
read -r -a table_recipes <<< "${TABLE_RECIPES:-${recipes[*]}}"
study=${STUDY:-study}
export PYTHONPATH=$PWD RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# `nice` orders processes within one session only where the kernel groups the CPU by session (autogroup, the
# default of many kernels: /proc/sys/kernel/sched_autogroup_enabled): a study started with `setsid` then takes
# half the cores from a test run in another session, nice or not (a clean clone's `.ci/run` took about
# 19 min beside it, 12 to 14 without). So, in a session of its own, the study lowers its session's group as well.
if [ "$(ps -o sid= -p $$ | tr -d ' ')" = "$$" ] && [ -w /proc/self/autogroup ]; then
    echo 19 > /proc/self/autogroup
fi
# On a fresh checkout, the runs an earlier machine left unfinished continue where they stopped; before that
# machine is given back: `python benchmarks/accuracy/unfinished.py stop` (stops the study, then saves), and commit the
# archives.
"$PY" benchmarks/accuracy/unfinished.py restore
# Every seed's runs in one pool: a seed's evaluations before the next seed's trainings, so no core waits for the
# slowest run of a seed. The tables (any time, from what has finished: `protocol.py --phase table ...`) at the end.
nice -n 19 "$PY" benchmarks/accuracy/protocol.py --scale cpu --phase run --recipes "${recipes[@]}" \
    --seeds "$@" --jobs 2 --threats "${threats[@]}" --study "$study"
last=$(printf '%s\n' "$@" | sort -n | tail -1)
# shellcheck disable=SC2046  # the seeds 0..last, as separate words
nice -n 19 "$PY" benchmarks/accuracy/protocol.py --scale cpu --phase table --recipes "${table_recipes[@]}" \
    --seeds $(seq -s ' ' 0 "$last") --threats "${threats[@]}" --study "$study"
