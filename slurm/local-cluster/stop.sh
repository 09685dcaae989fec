#!/bin/bash
# Stops what start.sh started, by the PIDs it recorded: cancels the cluster's jobs first (so no
# slurmstepd outlives slurmd), then slurmd, slurmctld and munged. PURGE=1 also removes the state
# folder (job ids then start again from 1); the packages stay installed.
BASE=${LOCAL_SLURM_DIR:-/tmp/le5-slurm}
stop() {  # stop NAME PIDFILE
  local pid
  [ -f "$2" ] || { echo "$1: not started by start.sh (no $2)"; return; }
  pid=$(cat "$2")
  if kill -0 "$pid" 2>/dev/null && [ "$(ps -p "$pid" -o comm=)" = "$1" ]; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "$1 ($pid) ignored SIGTERM: SIGKILL"; kill -9 "$pid"; fi
    echo "$1 ($pid) stopped"
  else
    echo "$1 ($pid) was not running"
  fi
  rm -f "$2"
}
if [ -f "$BASE/run/slurmctld.pid" ] && command -v squeue >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
  jobs=$(squeue -h -o %A)
  if [ -n "$jobs" ]; then
    echo "cancelling jobs:" $jobs
    # shellcheck disable=SC2086
    scancel $jobs
    for _ in $(seq 100); do [ -z "$(squeue -h -t running,completing -o %A)" ] && break; sleep 0.1; done
  fi
fi
stop slurmd "$BASE/run/slurmd.pid"
stop slurmctld "$BASE/run/slurmctld.pid"
stop munged "$BASE/run/munged.pid"
if [ "${PURGE:-0}" = 1 ]; then rm -rf "$BASE" && echo "removed $BASE"; fi
exit 0
