#!/usr/bin/env bash
# MAGINet (AlbedoNet) vs the plain U-Net baseline at demo scale on the synthetic data: same data, losses,
# optimizer, steps and seeds (config.seed: initialisation and batch order). Results: docs/ablation.md.
#   bash benchmarks/ablation.sh [SEEDS...]        (default: 0 1 2), then
#   python benchmarks/ablation_table.py runs/ablation
set -euo pipefail
seeds=("${@:-0 1 2}")
for seed in ${seeds[@]}; do
  for model in albedo unet_baseline; do
    wd="runs/ablation/${model}_seed${seed}"
    python -m maginet_jax.train --config="configs/${model}.py:demo" --workdir="$wd" --config.seed="$seed"
    python -m maginet_jax.evaluate --config="configs/${model}.py:demo" --workdir="$wd" --config.seed="$seed" > /dev/null
  done
done
