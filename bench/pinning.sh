# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables are read by the scripts that source this file
# Sourced by the load harnesses. Pinning: the load generator on the first CPU this process may
# use, the servers on the second, so they do not take turns on one core. Sets `cpus` (the CPUs
# we may use), `LOAD_ON` and `SERVE_ON` (command prefixes, empty on one core or without
# taskset) and `WORKERS` (worker threads per server: 1 when pinned, else every CPU).
mapfile -t cpus < <(python3 -c 'import os; print("\n".join(map(str, sorted(os.sched_getaffinity(0)))))')
if [ "${#cpus[@]}" -ge 2 ] && command -v taskset >/dev/null; then
  LOAD_ON=(taskset -c "${cpus[0]}")
  SERVE_ON=(taskset -c "${cpus[1]}")
  WORKERS=1
else
  LOAD_ON=()
  SERVE_ON=()
  WORKERS=${#cpus[@]}
fi
