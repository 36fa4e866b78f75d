#!/usr/bin/env bash
# N training processes on this machine, joined through a coordinator on 127.0.0.1: a multi-host run in
# miniature, for tests and for trying the multi-process code paths before paying for a pod.
#   launch/local_multiprocess.sh N -- --config=configs/albedo.py:smoke --workdir=runs/mp [--config.key=value ...]
# Each process gets CPU devices of its own (LOCAL_DEVICES each, default 1) and the same arguments plus
# --coordinator_address/--num_processes/--process_id; the coordinator takes COORDINATOR_PORT, or a port the
# system reports free. Process 0 logs to this script's output (its stderr with its stdout); process i > 0 to
# <workdir>/process_<i>.log when LOG_ALL=1, else to a temporary file whose last lines are printed if it fails
# (it repeats process 0's log otherwise).
# If one process fails, the others are killed (the run cannot go on without it; a SIGTERM would only reach
# JAX's preemption service while they wait for it in a collective); the exit status is the first failure's (0
# when all succeed).
# Ctrl-C, SIGTERM or SIGHUP to this script is passed on to every process as SIGTERM (a terminal's Ctrl-C may reach
# them too, which is harmless), and they checkpoint at their next step and exit as a single run would; a second
# one kills them at once (before the first step, while compiling or preparing data, they have nothing to save).
# Killed itself (SIGKILL, which it cannot pass on), the processes get SIGTERM from the kernel instead (on Linux: each
# sets PR_SET_PDEATHSIG before it execs the training): they stop as above rather than train on unsupervised.
set -uo pipefail
usage="usage: $0 N -- <maginet_jax.train arguments>"
[[ $# -ge 2 && "$1" =~ ^[1-9][0-9]*$ && "$2" == "--" ]] || { echo "$usage" >&2; exit 2; }
n=$1
shift 2
port="${COORDINATOR_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
workdir=""
previous=""
for arg in "$@"; do
  [[ "$arg" == --workdir=* ]] && workdir="${arg#--workdir=}"
  [[ "$previous" == --workdir ]] && workdir="$arg"
  previous="$arg"
done
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

pids=()
signals=0
stop_all() { for pid in "${pids[@]}"; do [[ -n "$pid" ]] && kill "-$1" "$pid" 2>/dev/null; done; }
on_signal() { signals=$((signals + 1)); if ((signals == 1)); then stop_all TERM; else stop_all KILL; fi; }
trap on_signal TERM INT HUP
# What util-linux's `setpriv --pdeathsig TERM` does, with no package beyond Python (minimal images lack setpriv).
on_our_death=()
[[ "$(uname -s)" == Linux ]] && on_our_death=(python -c 'import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: kept across exec
os.execvp(sys.argv[1], sys.argv[1:])')
log_of=()
for ((i = 0; i < n; i++)); do
  out="$logs/process_$i.log"
  if [[ "${LOG_ALL:-0}" == 1 && -n "$workdir" ]]; then mkdir -p "$workdir"; out="$workdir/process_$i.log"; fi
  log_of+=("$out")
  cmd=("${on_our_death[@]}" python -m maginet_jax.train "$@" --coordinator_address="127.0.0.1:$port" --num_processes="$n"
       --process_id="$i")
  if [[ $i -eq 0 ]]; then
    JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="${LOCAL_DEVICES:-1}" "${cmd[@]}" 2>&1 &
  else
    JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="${LOCAL_DEVICES:-1}" "${cmd[@]}" > "$out" 2>&1 &
  fi
  pids+=($!)
done

# Poll rather than `wait`: a trapped signal must be forwarded at once, and a failure must stop the rest. Bash's
# notices of the processes it killed (each with its whole command line) go nowhere; this script's own to fd 3.
exec 3>&2
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
    if [[ $rc -ne 0 && $status -eq 0 ]]; then
      status=$rc
      stop_all KILL
      if ((i > 0 && signals == 0)); then
        echo "local_multiprocess.sh: process $i exited with status $rc; the end of its log:" >&3
        tail -n 20 "${log_of[$i]}" >&3
      fi
    fi
  done
  [[ $running -eq 0 ]] && break
  sleep 0.5
done 2>/dev/null
exit "$status"
