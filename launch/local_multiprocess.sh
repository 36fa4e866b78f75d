#!/usr/bin/env bash
# N training processes on this machine, joined through a coordinator on 127.0.0.1: a multi-host run in
# miniature, for tests and for trying the multi-process code paths before paying for a pod.
#   launch/local_multiprocess.sh N -- --config=configs/albedo.py:smoke --workdir=runs/mp [--config.key=value ...]
# Each process gets CPU devices of its own (LOCAL_DEVICES each, default 1) and the same arguments plus
# --coordinator_address/--num_processes/--process_id. Process 0 logs to the terminal; process i > 0 to
# <workdir>/process_<i>.log only when LOG_ALL=1 (else its output is dropped: it repeats process 0's).
# If one process fails, the others are killed (the run cannot go on without it; a SIGTERM would only reach
# JAX's preemption service while they wait for it in a collective); the exit status is the first failure's (0
# when all succeed).
# Ctrl-C or SIGTERM to this script is passed on to every process (a terminal's Ctrl-C may reach them twice,
# which is harmless), and they checkpoint and exit as a single run would.
set -uo pipefail
usage="usage: $0 N -- <maginet_jax.train arguments>"
[[ $# -ge 2 && "$1" =~ ^[1-9][0-9]*$ && "$2" == "--" ]] || { echo "$usage" >&2; exit 2; }
n=$1
shift 2
port="${COORDINATOR_PORT:-$((20000 + RANDOM % 20000))}"
workdir=""
for arg in "$@"; do [[ "$arg" == --workdir=* ]] && workdir="${arg#--workdir=}"; done

pids=()
stop_all() { for pid in "${pids[@]}"; do [[ -n "$pid" ]] && kill "-$1" "$pid" 2>/dev/null; done; }
trap 'stop_all TERM' TERM INT
for ((i = 0; i < n; i++)); do
  out=/dev/null
  if [[ $i -eq 0 ]]; then out=/dev/stdout
  elif [[ "${LOG_ALL:-0}" == 1 && -n "$workdir" ]]; then mkdir -p "$workdir"; out="$workdir/process_$i.log"; fi
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="${LOCAL_DEVICES:-1}" python -m maginet_jax.train "$@" \
    --coordinator_address="127.0.0.1:$port" --num_processes="$n" --process_id="$i" > "$out" 2>&1 &
  pids+=($!)
done

# Poll rather than `wait`: a trapped signal must be forwarded at once, and a failure must stop the rest.
status=0
while :; do
  running=0
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    [[ -z "$pid" ]] && continue
    if kill -0 "$pid" 2>/dev/null; then running=1; continue; fi
    wait "$pid"
    rc=$?
    pids[$i]=""
    if [[ $rc -ne 0 && $status -eq 0 ]]; then status=$rc; stop_all KILL; fi
  done
  [[ $running -eq 0 ]] && break
  sleep 0.5
done
exit "$status"
