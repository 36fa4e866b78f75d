#!/usr/bin/env bash
# A MAGINet run on a Cloud TPU VM pod slice, end to end. Every parameter is explicit (nothing is taken from
# gcloud's defaults); --dry_run (before any --, after which it is the training's own) prints the gcloud
# commands instead of running them.
#
#   launch/tpu_pod.sh create --project=P --zone=Z --name=N --accelerator_type=v5litepod-16 \
#       --version=v2-alpha-tpuv5-lite [--spot]
#   launch/tpu_pod.sh setup  --project=P --zone=Z --name=N --repo=https://github.com/you/maginet-jax --ref=main
#   launch/tpu_pod.sh run    --project=P --zone=Z --name=N --workdir=gs://BUCKET/runs/albedo \
#       -- --config=configs/albedo.py [--config.key=value ...]
#   launch/tpu_pod.sh logs   --project=P --zone=Z --name=N [--worker=0]
#   launch/tpu_pod.sh stop   --project=P --zone=Z --name=N      # SIGTERM: checkpoint, then exit 0
#   launch/tpu_pod.sh delete --project=P --zone=Z --name=N
#
# setup clones the repo into ~/maginet-jax on every worker (or updates that clone), checks out --ref as the repo
# has it now, and installs it with the `tpu` extra. run starts
# `python -m maginet_jax.train --distributed` on every worker in the background (output in
# ~/maginet-train.log), unless one is already going on any worker; running it again with the same workdir
# resumes. See launch/README.md.
set -euo pipefail

die() { echo "tpu_pod.sh: error: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || die "usage: tpu_pod.sh create|setup|run|logs|stop|delete --project=P --zone=Z --name=N ... [--dry_run]"
command=$1
shift
# The options each command reads; any other is a mistake (a typo would otherwise be dropped without a word).
declare -A options=([create]="project zone name accelerator_type version spot" [setup]="project zone name repo ref"
                    [run]="project zone name workdir" [logs]="project zone name worker" [stop]="project zone name"
                    [delete]="project zone name")
[[ -n "${options[$command]:-}" ]] || die "unknown command '$command'; expected create, setup, run, logs, stop or delete"
declare -A opt=()
train_args=()
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry_run) dry_run=1 ;;
    --spot) [[ $command == create ]] || die "--spot is for create"; opt[spot]=1 ;;
    --) shift; train_args=("$@"); break ;;
    --*=*) key=${1%%=*}; key=${key#--}
      [[ " ${options[$command]} " == *" $key "* ]] || die "$command takes no --$key (it takes: ${options[$command]})"
      opt[$key]=${1#*=} ;;
    *) die "unexpected argument '$1' (options are --key=value; training arguments go after --)" ;;
  esac
  shift
done

need() { for k in "$@"; do [[ -n "${opt[$k]:-}" ]] || die "$command needs --$k"; done; }
# --dry_run prints each command as a shell would take it: arguments single-quoted where they need it.
show() {
  local out=() a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}
gcloud_() {
  if [[ $dry_run -eq 1 ]]; then show gcloud "$@"; else gcloud "$@"; fi
}
need project zone name
where=(--project="${opt[project]}" --zone="${opt[zone]}")
ssh_all() { gcloud_ compute tpus tpu-vm ssh "${opt[name]}" "${where[@]}" --worker=all --command="$1"; }

case "$command" in
  create)
    need accelerator_type version
    spot=(); [[ -n "${opt[spot]:-}" ]] && spot=(--spot)
    gcloud_ compute tpus tpu-vm create "${opt[name]}" "${where[@]}" \
      --accelerator-type="${opt[accelerator_type]}" --version="${opt[version]}" "${spot[@]}" ;;
  setup)
    need repo ref
    # The ref as the repo has it now, detached: `git checkout main` in an earlier clone kept its old main.
    repo=$(printf '%q' "${opt[repo]}")
    ssh_all "set -e; [ -d ~/maginet-jax ] || git clone -q $repo ~/maginet-jax; cd ~/maginet-jax; \
git remote set-url origin $repo; git fetch -q origin $(printf '%q' "${opt[ref]}"); git checkout -q --detach FETCH_HEAD; \
pip install -q -e '.[tpu]'" ;;
  run)
    need workdir
    [[ ${#train_args[@]} -gt 0 ]] || die "run needs the training arguments after --, e.g. -- --config=configs/albedo.py"
    quoted=$(printf '%q ' "${train_args[@]}")
    # First, on every worker, that no run is going: a second one would share the TPU chips and the workdir. (A
    # worker that refuses stops the script here, before any worker starts, so no partial pod waits on the rest.)
    ssh_all "if pgrep -f '[p]ython -m maginet_jax.train' > /dev/null; then \
echo \"\$(hostname): a training run is already going (tpu_pod.sh stop ends it)\" >&2; exit 1; fi"
    ssh_all "cd ~/maginet-jax && nohup python -m maginet_jax.train --distributed \
--workdir=$(printf '%q' "${opt[workdir]}") $quoted > ~/maginet-train.log 2>&1 < /dev/null &" ;;
  logs)
    gcloud_ compute tpus tpu-vm ssh "${opt[name]}" "${where[@]}" --worker="${opt[worker]:-0}" \
      --command="tail -n 200 -f ~/maginet-train.log" ;;
  stop)
    ssh_all "pkill -TERM -f '[p]ython -m maginet_jax.train' || true" ;;  # [p]: not this shell's own command line
  delete)
    gcloud_ compute tpus tpu-vm delete "${opt[name]}" "${where[@]}" --quiet ;;
  *) die "unknown command '$command'; expected create, setup, run, logs, stop or delete" ;;
esac
