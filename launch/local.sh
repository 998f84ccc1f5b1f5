#!/usr/bin/env bash
# Runs N processes of a diffhand-jax command on this machine, over localhost, each with its own fake CPU
# devices: the way to debug multi-host code without a cluster (and what the tests use).
#
#   launch/local.sh N [DEVICES_PER_PROCESS] -- python -m diffhand_jax.main --config=... --workdir=...
#
# Each process logs to $LOG_DIR/process_<i>.log (default ./local_logs). Exits non-zero if any
# process fails.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 N [DEVICES_PER_PROCESS] -- COMMAND..." >&2
  exit 2
fi
num_processes="$1"; shift
devices_per_process=1
if [[ "$1" != "--" ]]; then devices_per_process="$1"; shift; fi
[[ "$1" == "--" ]] && shift
log_dir="${LOG_DIR:-local_logs}"
mkdir -p "$log_dir"
port="${DIFFHAND_PORT:-$((20000 + RANDOM % 20000))}"

pids=()
for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices_per_process} ${XLA_FLAGS:-}" \
  DIFFHAND_COORDINATOR="127.0.0.1:${port}" DIFFHAND_NUM_PROCESSES="$num_processes" DIFFHAND_PROCESS_ID="$i" \
    "$@" >"$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM

status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see $log_dir/process_$i.log" >&2
    status=1
  fi
done
exit $status
