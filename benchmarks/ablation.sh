#!/usr/bin/env bash
# MAGINet (AlbedoNet) vs the plain U-Net baseline on the synthetic data: same data, losses, optimizer, steps and
# seeds (config.seed: initialisation and batch order). Results: docs/ablation.md.
#   bash benchmarks/ablation.sh [SEEDS...]        (default: 0 1 2 3 4), then
#   python benchmarks/ablation_table.py runs/ablation
# Each run is trained, evaluated (eval/results.json) and put through benchmarks/lighting_invariance.py
# (eval/lighting.json); a step whose file exists is skipped, so an interrupted ablation continues where it stopped.
# ABLATION_VARIANT (default demo; the tests use smoke; set and empty: the paper configs, no variant) and
# ABLATION_ROOT (default runs/ablation) change both models; ABLATION_ARGS adds config overrides to both trainings
# (the 256² ablation and the tests use it).
# ABLATION_RECORD=DIR copies each finished run's figures, with the machine and commit, to DIR/<model>_seed<N>.json
# (ablation_table.py --record): a record in the repository outlasts the session that made it, so an ablation too
# long for one session can be completed over several.
set -euo pipefail
seeds=("${@:-0 1 2 3 4}")
variant="${ABLATION_VARIANT-demo}"  # not :-, for which an empty value is unset
root="${ABLATION_ROOT:-runs/ablation}"
read -r -a extra <<< "${ABLATION_ARGS:-}"
# Every seed checked before the first training, not when its turn comes hours later.
if [[ -z "${seeds[*]// /}" ]]; then echo "ablation.sh: error: no seeds given" >&2; exit 2; fi
for seed in ${seeds[@]}; do
  if [[ ! $seed =~ ^[0-9]+$ ]]; then
    echo "ablation.sh: error: seed '$seed' is not a non-negative integer" >&2; exit 2
  fi
done
for seed in ${seeds[@]}; do
  for model in albedo unet_baseline; do
    wd="${root}/${model}_seed${seed}"
    if [[ -n "${ABLATION_RECORD:-}" && -f "${ABLATION_RECORD}/${model}_seed${seed}.json" ]]; then
      echo "skipping $wd: recorded in ${ABLATION_RECORD}"; continue
    fi
    if [[ ! -f "$wd/eval/results.json" ]]; then
      python -m maginet_jax.train --config="configs/${model}.py${variant:+:$variant}" --workdir="$wd" --config.seed="$seed" "${extra[@]}"
      python -m maginet_jax.evaluate --workdir="$wd" > /dev/null
    fi
    if [[ ! -f "$wd/eval/lighting.json" ]]; then
      python benchmarks/lighting_invariance.py --workdir="$wd" --json "$wd/eval/lighting.json"
    fi
    if [[ -n "${ABLATION_RECORD:-}" ]]; then
      python benchmarks/ablation_table.py "$root" --record "$ABLATION_RECORD" > /dev/null
    fi
  done
done
