#!/usr/bin/env bash
# JAX against PyTorch on one GPU, every stage at the paper's resolutions, in bfloat16 and float32 (TF32): the runs
# behind benchmarks/results/<device>/. Each is one `python -m benchmarks.compare` (its docstring says what is timed).
#
#   bash benchmarks/compare_gpu.sh [JSON_DIR]          (default JSON_DIR: benchmarks/results/json)
#
# Tables and charts go to ${COMPARE_OUT_DIR:-benchmarks/results}/<device>/<stage>[_bfloat16].{md,png}, the reports
# to JSON_DIR (a rehearsal on another machine sets COMPARE_OUT_DIR, or it overwrites that machine's committed tables).
# The loss networks run at perceptual.precision=default (TF32), as PyTorch's do. Both frameworks share the GPU in
# one process, so the batches are below the paper configs' (albedo 16, refine 8, passes 8): albedo 8, refine 4,
# passes 1. On an H100 (2026-11-26) JAX's albedo train step at batch 16 in bfloat16 asked for one 32.2 GiB buffer,
# more than half the GPU left it; XLA's CPU estimate of a step per image at 1024² is 4.4 GiB for refine and 24.8 GiB
# for passes (`python -m maginet_jax.train --config=configs/<stage>.py --config.batch_size=1 --dry_run --workdir=D`).
# Environment (the tests shrink everything with these):
#   COMPARE_STAGES (albedo refine passes), COMPARE_DTYPES (bfloat16 float32), COMPARE_VARIANT (config variant,
#   default: none, the paper configs at the batches above), COMPARE_VARIANTS (the timed variants), COMPARE_ARGS
#   (more flags for every run), PYTHON (the interpreter, default python), COMPARE_PERCEPTUAL (the loss networks'
#   perceptual.precision: default, the TF32 above, or bfloat16; the files of a bfloat16 run end _perceptual-bfloat16).
set -euo pipefail
json_dir=${1:-benchmarks/results/json}
stages=${COMPARE_STAGES:-albedo refine passes}
dtypes=${COMPARE_DTYPES:-bfloat16 float32}
variant=${COMPARE_VARIANT:+:${COMPARE_VARIANT}}
variants=${COMPARE_VARIANTS:-jax,torch_eager,torch_eager_channels_last,torch_compile_channels_last}
perceptual=${COMPARE_PERCEPTUAL:-default}
suffix=""  # compare_report.stem's, for the JSON beside its table
if [[ $perceptual == bfloat16 ]]; then suffix=_perceptual-bfloat16; fi
read -r -a extra <<< "${COMPARE_ARGS:---steps=10 --warmup=2 --pipeline_batches=10 --config.data.worker_count=12}"
declare -A gpu_batch=([albedo]=8 [refine]=4 [passes]=1)
# Every value checked before the first run, not when its turn comes after hours of others.
fail() { echo "compare_gpu.sh: error: $*" >&2; exit 2; }
for stage in $stages; do
  [[ -v gpu_batch[$stage] ]] || fail "COMPARE_STAGES: '$stage' is not albedo, refine or passes"
done
for dtype in $dtypes; do
  [[ $dtype == bfloat16 || $dtype == float32 ]] || fail "COMPARE_DTYPES: '$dtype' is not bfloat16 or float32"
done
[[ $perceptual == default || $perceptual == bfloat16 ]] || fail "COMPARE_PERCEPTUAL: '$perceptual' is not default or bfloat16"
[[ -n ${stages// /} && -n ${dtypes// /} ]] || fail "COMPARE_STAGES and COMPARE_DTYPES must name at least one each"
mkdir -p "$json_dir"
for dtype in $dtypes; do
  for stage in $stages; do
    batch=()
    if [[ -z $variant ]]; then batch=(--config.batch_size="${gpu_batch[$stage]}"); fi
    "${PYTHON:-python}" -m benchmarks.compare --stage="$stage" --config="configs/${stage}.py${variant}" \
      --config.model.dtype="$dtype" --config.perceptual.precision="$perceptual" --variants="$variants" \
      --json="${json_dir}/${stage}_${dtype}${suffix}.json" --out_dir="${COMPARE_OUT_DIR:-benchmarks/results}" \
      "${batch[@]}" "${extra[@]}"
  done
done
