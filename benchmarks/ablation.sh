#!/usr/bin/env bash
# MAGINet (AlbedoNet) vs the plain U-Net baseline at demo scale on the synthetic data: same data, losses,
# optimizer, steps and seeds (config.seed: initialisation and batch order). Results: docs/ablation.md.
#   bash benchmarks/ablation.sh [SEEDS...]        (default: 0 1 2 3 4), then
#   python benchmarks/ablation_table.py runs/ablation
# ABLATION_VARIANT (default demo; the tests use smoke) and ABLATION_ROOT (default runs/ablation) change both;
# ABLATION_ARGS adds config overrides to both trainings (the tests shrink the networks with it). A run that has
# its eval/results.json is skipped, so an interrupted ablation continues where it stopped.
set -euo pipefail
seeds=("${@:-0 1 2 3 4}")
variant="${ABLATION_VARIANT:-demo}"
root="${ABLATION_ROOT:-runs/ablation}"
read -r -a extra <<< "${ABLATION_ARGS:-}"
for seed in ${seeds[@]}; do
  for model in albedo unet_baseline; do
    wd="${root}/${model}_seed${seed}"
    if [[ -f "$wd/eval/results.json" ]]; then echo "skipping $wd: already evaluated"; continue; fi
    python -m maginet_jax.train --config="configs/${model}.py:${variant}" --workdir="$wd" --config.seed="$seed" "${extra[@]}"
    python -m maginet_jax.evaluate --workdir="$wd" > /dev/null
  done
done
