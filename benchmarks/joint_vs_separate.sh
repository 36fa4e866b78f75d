#!/usr/bin/env bash
# Joint fine-tuning against separate fine-tuning, from the same three finished runs, for the same number of
# extra steps at the same per-network learning rates and schedule (configs/joint.py's).
#
#   bash benchmarks/joint_vs_separate.sh [ALBEDO_RUN REFINE_RUN PASSES_RUN OUT [VARIANT [STEPS]]]
#
# Defaults: the README's three demo runs (runs/{albedo,refine,passes}_demo), OUT=runs/joint_vs_separate, the
# :demo variant and its 150 steps. "separate" continues each run alone, in pipeline order (stage 2 on the
# continued stage 1, stage 3 on both), each in a copy of its workdir; "joint" is configs/joint.py. Both are
# then scored as six-pass pipelines by `python -m maginet_jax.evaluate` (OUT/*/eval/results.md), and the
# starting pipeline too (OUT/start). Extra config overrides for every run go in $EXTRA (tests use tiny ones).
set -euo pipefail
ALBEDO=${1:-runs/albedo_demo}; REFINE=${2:-runs/refine_demo}; PASSES=${3:-runs/passes_demo}
OUT=${4:-runs/joint_vs_separate}; VARIANT=${5:-demo}; EXTRA=${EXTRA:-}
# Every argument checked before the first training (minutes): the runs, the steps, the variant, and that no copy
# below (rm -rf, then cp) would remove the run it copies.
fail() { echo "joint_vs_separate.sh: error: $*" >&2; exit 2; }
for run in "$ALBEDO" "$REFINE" "$PASSES"; do [[ -f $run/config.json ]] || fail "$run is not a training run"; done
for pair in "$ALBEDO:albedo" "$REFINE:refine" "$PASSES:passes" "$PASSES:start"; do
  src=$(realpath -m "${pair%:*}"); dst=$(realpath -m "$OUT/${pair##*:}")
  [[ $src != "$dst" && $src != "$dst"/* ]] || fail "${pair%:*} lies in $OUT/${pair##*:}, which this script replaces"
done
[[ ${6:-1} =~ ^[1-9][0-9]*$ ]] || fail "STEPS '${6}' is not a positive integer"
STEPS=${6:-$(python -c "import sys; from configs import joint; print(joint.get_config(sys.argv[1]).num_train_steps)" \
  "$VARIANT" 2>/dev/null)} || fail "VARIANT '$VARIANT' is not one of configs/joint.py's"
read -r G_LR A_LR R_LR DECAY < <(python -c "
import sys; from configs import joint; c = joint.get_config(sys.argv[1])
print(c.optim.learning_rate, c.albedo.learning_rate, c.refine.learning_rate, c.optim.decay_steps * $STEPS // c.num_train_steps)
" "$VARIANT")
[[ -n $DECAY ]] || fail "VARIANT '$VARIANT' is not one of configs/joint.py's"
mkdir -p "$OUT"
steps_of() { python -c "import json, sys; print(json.load(open('$1/config.json'))['num_train_steps'])"; }
schedule() {  # the joint run's schedule over the last $STEPS steps of a run continued to $1 steps
  echo --config.num_train_steps=$1 --config.optim.schedule=constant_then_linear --config.optim.warmup_steps=0 \
       --config.optim.decay_steps=$DECAY --config.optim.end_learning_rate_factor=0.0 --config.optim.learning_rate=$2
}
train() { python -m maginet_jax.train --config=configs/$1.py:$VARIANT --workdir="$2" "${@:3}" $EXTRA; }

train joint "$OUT/joint" --config.init.albedo_workdir="$ALBEDO" --config.init.refine_workdir="$REFINE" \
  --config.init.passes_workdir="$PASSES" --config.num_train_steps=$STEPS --config.optim.decay_steps=$DECAY

for run in albedo refine passes; do
  src=$(eval echo \$${run^^}); rm -rf "$OUT/$run"; cp -r "$src" "$OUT/$run"
done
train albedo "$OUT/albedo" $(schedule $(( $(steps_of "$ALBEDO") + STEPS )) $A_LR)
# A resumed run keeps the upstream steps it started from (its config.json): name the continued ones.
train refine "$OUT/refine" $(schedule $(( $(steps_of "$REFINE") + STEPS )) $R_LR) \
  --config.init.albedo_workdir="$OUT/albedo" --config.init.albedo_step=$(steps_of "$OUT/albedo")
train passes "$OUT/passes" $(schedule $(( $(steps_of "$PASSES") + STEPS )) $G_LR) \
  --config.init.albedo_workdir="$OUT/albedo" --config.init.refine_workdir="$OUT/refine" \
  --config.init.albedo_step=$(steps_of "$OUT/albedo") --config.init.refine_step=$(steps_of "$OUT/refine")

rm -rf "$OUT/start"; cp -r "$PASSES" "$OUT/start"  # its config.json still names the runs it started from
python -m maginet_jax.evaluate --workdir="$OUT/start"
python -m maginet_jax.evaluate --workdir="$OUT/passes"
python -m maginet_jax.evaluate --workdir="$OUT/joint" --compare="$OUT/passes"
