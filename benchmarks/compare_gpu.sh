#!/usr/bin/env bash
# JAX against PyTorch on one GPU, every stage at paper scale, in bfloat16 and float32 (TF32): the runs behind
# benchmarks/results/<device>/. Each is one `python -m benchmarks.compare` (its docstring says what is timed).
#
#   bash benchmarks/compare_gpu.sh [JSON_DIR]          (default JSON_DIR: benchmarks/results/json)
#
# Tables and charts go to benchmarks/results/<device>/<stage>[_bfloat16].{md,png}, the reports to JSON_DIR.
# The loss networks run at perceptual.precision=default (TF32), as PyTorch's do. Stage 3 runs at batch 2, not
# the paper config's 8: its VGG16 loss over five 1024² passes keeps about 1 GB of float32 activations per image
# and framework (counted from VGG16's layer sizes, not measured), and both frameworks live in one process.
# Environment (the tests shrink everything with these):
#   COMPARE_STAGES (albedo refine passes), COMPARE_DTYPES (bfloat16 float32), COMPARE_VARIANT (config variant,
#   default: none, paper scale), COMPARE_VARIANTS (the timed variants), COMPARE_ARGS (more flags for every run),
#   PYTHON (the interpreter, default python).
set -euo pipefail
json_dir=${1:-benchmarks/results/json}
stages=${COMPARE_STAGES:-albedo refine passes}
dtypes=${COMPARE_DTYPES:-bfloat16 float32}
variant=${COMPARE_VARIANT:+:${COMPARE_VARIANT}}
variants=${COMPARE_VARIANTS:-jax,torch_eager,torch_eager_channels_last,torch_compile_channels_last}
read -r -a extra <<< "${COMPARE_ARGS:---steps=10 --warmup=2 --pipeline_batches=10 --config.data.worker_count=12}"
mkdir -p "$json_dir"
for dtype in $dtypes; do
  for stage in $stages; do
    batch=()
    if [[ $stage == passes && -z $variant ]]; then batch=(--config.batch_size=2); fi
    "${PYTHON:-python}" -m benchmarks.compare --stage="$stage" --config="configs/${stage}.py${variant}" \
      --config.model.dtype="$dtype" --config.perceptual.precision=default --variants="$variants" \
      --json="${json_dir}/${stage}_${dtype}.json" "${batch[@]}" "${extra[@]}"
  done
done
