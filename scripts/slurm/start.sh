#!/usr/bin/env bash
# Install (Debian packages) and start a single-node SLURM cluster with
# accounting, without systemd: munged, mariadbd, slurmdbd, slurmctld, slurmd.
#
# Two partitions share the node: `debug` (default) and `urgent`, whose higher
# PriorityTier preempts `debug` jobs (REQUEUE, with submitit's signal first),
# so preemption can be tested for real. Every daemon started here writes its
# pid to $ISOFLOP_SLURM_STATE/pids/; scripts/slurm/stop.sh stops exactly those.
# Idempotent: a second call leaves running daemons alone.
#
# Usage: bash scripts/slurm/start.sh        (as root)
set -euo pipefail

STATE="${ISOFLOP_SLURM_STATE:-/var/tmp/isoflop-slurm}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PIDS="$STATE/pids"
NODE="$(hostname -s)"
CPUS="${ISOFLOP_SLURM_CPUS:-8}"
MEMORY_MB="${ISOFLOP_SLURM_MEMORY_MB:-16000}"

log() { echo "slurm/start.sh: $*" >&2; }
alive() { [[ -f "$PIDS/$1.pid" ]] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then log "timed out waiting for $what"; exit 1; fi
    sleep 0.2
  done
}
render() {  # render TEMPLATE DESTINATION MODE: a new file owned by root (SlurmUser), whatever was there
  local rendered
  rendered="$(mktemp)"
  sed -e "s|@STATE@|$STATE|g" -e "s|@NODE@|$NODE|g" -e "s|@CPUS@|$CPUS|g" \
      -e "s|@MEMORY_MB@|$MEMORY_MB|g" "$1" > "$rendered"
  install -o root -g root -m "$3" "$rendered" "$2"
  rm -f "$rendered"
}

if [[ $EUID -ne 0 ]]; then log "run as root (it installs packages and starts daemons)"; exit 2; fi

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
  log "installing slurm, munge, slurmdbd and mariadb (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
fi

mkdir -p "$STATE"/{pids,spool,slurmd,log,mysql-run} /etc/slurm /run/munge /run/mysqld
render "$HERE/slurm.conf.in" /etc/slurm/slurm.conf 644
render "$HERE/slurmdbd.conf.in" /etc/slurm/slurmdbd.conf 600  # slurmdbd refuses a file SlurmUser does not own

# munge: authentication between the daemons and the client commands
if ! alive munged; then
  [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key /run/munge && chmod 400 /etc/munge/munge.key
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  wait_for 10 munged test -s /run/munge/munged.pid
  cp /run/munge/munged.pid "$PIDS/munged.pid"
fi

# mariadb: storage for slurmdbd (submitit polls sacct)
MYSQL_SOCKET=/run/mysqld/mysqld.sock  # where slurmdbd looks for it
if ! alive mariadbd; then
  if [[ ! -d "$STATE/mysql/mysql" ]]; then
    mariadb-install-db --user=mysql --datadir="$STATE/mysql" >"$STATE/log/mariadb-install.log" 2>&1
  fi
  chown -R mysql:mysql "$STATE/mysql" "$STATE/mysql-run" /run/mysqld
  mariadbd --user=mysql --datadir="$STATE/mysql" --socket="$MYSQL_SOCKET" --skip-networking \
    --pid-file="$STATE/mysql-run/mariadbd.pid" --log-error="$STATE/mysql-run/mariadb.log" \
    </dev/null >/dev/null 2>&1 &
  wait_for 30 mariadb mariadb --socket="$MYSQL_SOCKET" -uroot -e "SELECT 1"
  cp "$STATE/mysql-run/mariadbd.pid" "$PIDS/mariadbd.pid"
  mariadb --socket="$MYSQL_SOCKET" -uroot -e "
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'isoflop-slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
fi

if ! alive slurmdbd; then
  slurmdbd
  wait_for 30 slurmdbd sacctmgr --immediate --noheader list cluster
fi

if ! alive slurmctld; then
  slurmctld -i
  wait_for 30 slurmctld scontrol ping
fi

if ! alive slurmd; then
  slurmd -b
fi
wait_for 60 "node $NODE to be idle" bash -c "sinfo --noheader --nodes='$NODE' --format=%T | grep -Eq '^idle'"
wait_for 30 "accounting" bash -c "sacct --noheader --starttime=now-1minute >/dev/null"
log "SLURM is up: partitions $(sinfo --noheader --format=%P | tr '\n' ' ')(state in $STATE)"
