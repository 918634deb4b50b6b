#!/usr/bin/env bash
# Stop the local Slurm cluster started by ci/slurm/up.sh. Idempotent.
# Cancels all jobs, then stops daemons in reverse start order by pid file.
# --purge also deletes the state dir (config, accounting DB, logs).
set -uo pipefail

STATE=${LONGDOC_SLURM_DIR:-/tmp/longdoc-slurm}
RUN=$STATE/run
say() { printf '[slurm-down] %s\n' "$*"; }

# A zombie counts as stopped: PID 1 here reaps late.
alive() { # alive PIDFILE [NAME]
  local pid state
  [[ -s $1 ]] || return 1
  pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $state != Z ]] || return 1
  # A stale pid file (killed session) may name a reused pid: check the name.
  [[ -z ${2:-} || $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}

stop() { # stop NAME PIDFILE: TERM, wait up to 10 s, then KILL
  alive "$2" "$1" || return 0
  local pid
  pid=$(<"$2")
  say "stopping $1 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$2" "$1" || return 0; sleep 0.2; done
  say "$1 ignored TERM, killing"
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 10); do alive "$2" "$1" || return 0; sleep 0.2; done
  say "WARNING: $1 (pid $pid) still running"
}

if [[ -f $STATE/etc/slurm.conf ]]; then
  export SLURM_CONF=$STATE/etc/slurm.conf
  if alive "$RUN/slurmctld.pid" slurmctld; then
    ids=$(timeout 20 squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [[ -n ${ids// /} ]]; then
      say "cancelling jobs: $ids"
      # shellcheck disable=SC2086 # word splitting of the id list is wanted
      timeout 20 scancel $ids 2>/dev/null || true
      # Give slurmd a moment to kill the job processes before it goes away.
      for _ in $(seq 25); do
        [[ -z $(timeout 5 squeue -h -o %i 2>/dev/null) ]] && break
        sleep 0.2
      done
    fi
  fi
fi

stop slurmd "$RUN/slurmd.pid"
stop slurmctld "$RUN/slurmctld.pid"
stop slurmdbd "$RUN/slurmdbd.pid"
stop mariadbd "$STATE/db/run/mariadb.pid"
stop munged "$STATE/munge/munged.pid"

# Drop the /etc/slurm links into our state dir so client commands fail fast
# ("no cluster") instead of waiting for a dead controller.
for f in slurm.conf gres.conf; do
  link=/etc/slurm/$f
  if [[ -L $link && $(readlink "$link") == "$STATE"/* ]]; then rm -f "$link"; fi
done

if [[ ${1:-} == --purge ]]; then
  say "removing $STATE"
  rm -rf "$STATE"
fi
say "stopped"
