#!/usr/bin/env bash
# Stop the daemons that scripts/slurm/start.sh started, by their pid files
# (and nothing else), in reverse order of their start.
set -uo pipefail

STATE="${ISOFLOP_SLURM_STATE:-/var/tmp/isoflop-slurm}"
PIDS="$STATE/pids"

stop() {  # stop NAME: TERM the pid in NAME.pid, wait, then KILL
  local file="$PIDS/$1.pid" pid
  [[ -f "$file" ]] || return 0
  pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$file"
  echo "slurm/stop.sh: stopped $1 ($pid)" >&2
}

for daemon in slurmd slurmctld slurmdbd mariadbd munged; do stop "$daemon"; done
