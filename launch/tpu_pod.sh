#!/usr/bin/env bash
# Runs stage-1 training on every worker of a Cloud TPU VM pod slice.
#   launch/tpu_pod.sh TPU_NAME ZONE gs://bucket/runs/albedo [--config.key=value ...]
# Assumes the repo is checked out at ~/maginet-jax on every worker and installed there with
#   pip install -e . "jax[tpu]"
set -euo pipefail
tpu=$1 zone=$2 workdir=$3
shift 3
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/maginet-jax && python -m maginet_jax.train --distributed --config=configs/albedo.py \
   --workdir=$workdir $*"
