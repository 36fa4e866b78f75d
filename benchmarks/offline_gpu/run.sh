#!/usr/bin/env bash
# benchmarks/compare_gpu.sh on a bare, offline GPU machine, as jobs in priority order under one deadline:
#
#   bash benchmarks/offline_gpu/run.sh DTYPE:STAGE:VARIANTS:LIMIT_S ...
#
# e.g. bfloat16:albedo:jax,torch_eager,torch_eager_channels_last,torch_compile_channels_last:300. README.md beside
# this says what to bring. Each job gets at most LIMIT_S and what is left of DEADLINE (s, default 570) and is
# skipped under 40 s; after each, ${OUT:-/tmp}/results.tgz holds every report so far, the log, nvidia-smi's line
# and the tables under benchmarks/results/. Environment: WHEELS (default .whl), WEIGHTS (default .weights),
# SITE (default /tmp/site), PY (default python3), SKIP_INSTALL (set: use the interpreter as it is), and
# compare_gpu.sh's own COMPARE_ARGS, COMPARE_VARIANT and COMPARE_OUT_DIR.
set -u
export PYTHONUNBUFFERED=1
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT  # the reports live on in the archive
mkdir -p "$work/json"
py=${PY:-python3}
if [[ -z ${SKIP_INSTALL:-} ]]; then
  site=${SITE:-/tmp/site}
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "${WHEELS:-.whl}"/*.whl || exit 1
  "$py" benchmarks/offline_gpu/weights.py unpack "${WEIGHTS:-.weights}" "$site" || exit 1
  export PYTHONPATH=$site:$PWD
fi
"$py" -c "import jax, flax, torch, benchmarks.compare; print('jax', jax.__version__, 'flax', flax.__version__,
'torch', torch.__version__, jax.devices())" || exit 1
(nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1 ||
  true) > "$work/nvidia-smi.txt"
echo "setup took $(( $(date +%s) - start )) s"
for job in "$@"; do
  IFS=: read -r dtype stage variants limit <<< "$job"
  left=$(( ${DEADLINE:-570} - ($(date +%s) - start) - 10 ))  # 10 s for the archive
  if (( limit > left )); then limit=$left; fi
  if (( limit < 40 )); then echo "=== $job: skipped, $left s left"; continue; fi
  echo "=== $job: at $(( $(date +%s) - start )) s, limit $limit s" | tee -a "$work/log.txt"
  COMPARE_STAGES=$stage COMPARE_DTYPES=$dtype COMPARE_VARIANTS=$variants PYTHON=$py \
    timeout -k 5 "$limit" bash benchmarks/compare_gpu.sh "$work/json" 2>&1 | tee -a "$work/log.txt"
  echo "=== $job: exit ${PIPESTATUS[0]} at $(( $(date +%s) - start )) s" | tee -a "$work/log.txt"
  tar czf "${OUT:-/tmp}/results.tgz" -C "$work" json log.txt nvidia-smi.txt -C "$PWD" benchmarks/results
done
