#!/usr/bin/env bash
# One-node Slurm cluster on this machine, for running and testing search trials as Slurm jobs.
#
#   tools/slurm/cluster.sh start    install slurm-wlm/munge if needed, configure, start, wait for idle
#   tools/slurm/cluster.sh stop     stop the daemons this script started
#   tools/slurm/cluster.sh status   daemon pids and sinfo
#
# State (slurm.conf, spool, saved controller state, logs, pid files, job completion log) lives in
# ${ASL_SLURM_DIR:-/var/tmp/asl-slurm}. The conf is also installed as /etc/slurm/slurm.conf (unless
# a slurm.conf not written by this script is already there) so the Slurm commands work from any shell;
# `start` prints an `export SLURM_CONF=...` line for the case where it is not.
#
# Exit codes: 0 ok, 1 error (daemon did not come up, ...), 2 usage, 3 Slurm/munge cannot be installed.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # the daemons live in sbin, often missing from a user's PATH

STATE_DIR="${ASL_SLURM_DIR:-/var/tmp/asl-slurm}"
CONF="$STATE_DIR/slurm.conf"
SYSTEM_CONF=/etc/slurm/slurm.conf
MARKER="# asl one-node test cluster (tools/slurm/cluster.sh)"
PARTITION=debug
WAIT_S="${ASL_SLURM_WAIT_S:-60}"
CONF_CHANGED=0

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

pid_alive() {  # pid_alive PIDFILE -> 0 if the pid in the file is a live process
  local pid
  [[ -s "$1" ]] || return 1
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  # A zombie (exited, not yet reaped) is not alive.
  [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]
}

node_name() { hostname -s; }

# ---------------------------------------------------------------------------------------------
install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
      && command -v munged >/dev/null && command -v sbatch >/dev/null; then
    return 0
  fi
  if ! command -v apt-get >/dev/null; then
    log "Slurm (slurmctld/slurmd/sbatch) or munged is missing and there is no apt-get to install them"
    exit 3
  fi
  if [[ "$(id -u)" != 0 ]]; then
    log "Slurm (slurmctld/slurmd/sbatch) or munged is missing and installing them needs root"
    exit 3
  fi
  log "installing slurm-wlm and munge with apt-get"
  local out="$STATE_DIR/apt.log"
  export DEBIAN_FRONTEND=noninteractive
  local -a install=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=120
                    slurm-wlm munge)
  # Try with the current package lists first; refresh them if that fails.
  if ! { "${install[@]}" >"$out" 2>&1 \
         || { apt-get update -q >>"$out" 2>&1 && "${install[@]}" >>"$out" 2>&1; }; }; then
    log "apt-get could not install slurm-wlm and munge (see $out):"
    tail -n 5 "$out" >&2 || true
    exit 3
  fi
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
      || ! command -v munged >/dev/null; then
    log "apt-get ran but slurmctld/slurmd/munged are still not on PATH (see $out)"
    exit 3
  fi
}

# ---------------------------------------------------------------------------------------------
munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  local key=/etc/munge/munge.key
  if [[ ! -s "$key" ]]; then
    log "creating munge key $key"
    install -d -m 0700 /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$key" --force
    else
      dd if=/dev/urandom bs=1 count=1024 of="$key" status=none
    fi
  fi
  munge_works && return 0
  local run_as=()
  if id munge >/dev/null 2>&1; then
    chown munge:munge /etc/munge "$key"
    run_as=(runuser -u munge --)
  fi
  chmod 0700 /etc/munge
  chmod 0400 "$key"
  install -d -m 0755 /run/munge
  install -d -m 0700 /var/lib/munge /var/log/munge
  if ((${#run_as[@]})); then chown munge:munge /run/munge /var/lib/munge /var/log/munge; fi
  # A stale socket/pid from a killed munged would make it refuse to start.
  if ! pid_alive /run/munge/munged.pid; then rm -f /run/munge/munge.socket.2 /run/munge/munged.pid; fi
  local force=()
  ((${#run_as[@]})) || force=(--force)
  "${run_as[@]}" "$(command -v munged)" "${force[@]}" </dev/null >/dev/null 2>&1 9>&- || true
  local i
  for ((i = 0; i < 50; i++)); do
    munge_works && { : >"$STATE_DIR/munged.started"; return 0; }
    sleep 0.2
  done
  log "munged did not start; tail of /var/log/munge/munged.log:"
  tail -n 20 /var/log/munge/munged.log >&2 2>/dev/null || true
  exit 1
}

# ---------------------------------------------------------------------------------------------
write_conf() {
  local node cpus mem tmp
  node="$(node_name)"
  [[ -n "$node" ]] || die "hostname -s is empty; Slurm needs a node name"
  cpus="$(nproc)"
  # Configure a little less memory than present so slurmd never drains the node for "Low RealMemory".
  mem="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
  tmp="$CONF.tmp.$$"
  cat >"$tmp" <<EOF
$MARKER
# State directory: $STATE_DIR. Regenerated by every 'cluster.sh start'.
ClusterName=asl
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# Short timeouts suitable for tests.
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=30
MessageTimeout=10
KillWait=5
Waittime=0
# No slurmdbd, so sacct does not work. Finished jobs are queried in two ways:
#  - MinJobAge keeps finished jobs in slurmctld (scontrol show job: state, reason, exit code) for a day;
#  - jobcomp/filetxt appends one line per finished job to JobCompLoc, kept after that.
MinJobAge=86400
MaxJobCount=50000
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/jobcomp.log
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  CONF_CHANGED=0
  if [[ -f "$CONF" ]] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
  else
    [[ -f "$CONF" ]] && CONF_CHANGED=1
    mv -f "$tmp" "$CONF"
  fi
  install_system_conf
}

install_system_conf() {
  # Install the conf where the Slurm commands look by default, but never clobber a foreign one.
  if [[ -f "$SYSTEM_CONF" ]] && ! head -n 1 "$SYSTEM_CONF" | grep -qxF "$MARKER"; then
    log "warning: $SYSTEM_CONF exists and was not written by this script; leaving it alone."
    log "         use: export SLURM_CONF=$CONF"
    return 0
  fi
  if [[ -f "$SYSTEM_CONF" ]] && cmp -s "$CONF" "$SYSTEM_CONF"; then return 0; fi
  install -d -m 0755 "$(dirname "$SYSTEM_CONF")"
  cp -f "$CONF" "$SYSTEM_CONF.tmp.$$"
  mv -f "$SYSTEM_CONF.tmp.$$" "$SYSTEM_CONF"
}

# ---------------------------------------------------------------------------------------------
show_logs() {
  local f
  for f in "$STATE_DIR/log/daemons.out" "$STATE_DIR/log/slurmctld.log" "$STATE_DIR/log/slurmd.log"; do
    if [[ -f "$f" ]]; then
      echo "--- tail of $f" >&2
      tail -n 25 "$f" >&2 || true
    fi
  done
}

node_state() { SLURM_CONF="$CONF" sinfo -h -N -n "$(node_name)" -o '%T' 2>/dev/null | head -n 1; }

node_ready() {
  local s
  s="$(node_state)" || return 1
  # idle, or already running jobs (a second 'start' while busy): usable either way.
  [[ "$s" =~ ^(idle|mixed|allocated|completing)$ ]]
}

start_daemons() {
  local restarted=0
  if ! pid_alive "$STATE_DIR/run/slurmctld.pid"; then
    rm -f "$STATE_DIR/run/slurmctld.pid"
    slurmctld -f "$CONF" </dev/null >>"$STATE_DIR/log/daemons.out" 2>&1 9>&- \
      || { show_logs; die "slurmctld failed to start"; }
    restarted=1
  fi
  if ! pid_alive "$STATE_DIR/run/slurmd.pid"; then
    rm -f "$STATE_DIR/run/slurmd.pid"
    slurmd -f "$CONF" -N "$(node_name)" </dev/null >>"$STATE_DIR/log/daemons.out" 2>&1 9>&- \
      || { show_logs; die "slurmd failed to start"; }
    restarted=1
  fi
  local deadline=$((SECONDS + WAIT_S)) s resumed=0
  while ((SECONDS < deadline)); do
    if node_ready; then
      if ((restarted)); then
        log "cluster up: node $(node_name), partition $PARTITION, state in $STATE_DIR"
      fi
      return 0
    fi
    s="$(node_state || true)"
    # A node left down/drained by an earlier unclean stop: put it back in service once.
    if ((!resumed)) && [[ "$s" =~ ^(down|drained|draining|drain|fail|failing)\*?$ ]]; then
      SLURM_CONF="$CONF" scontrol update NodeName="$(node_name)" State=RESUME >/dev/null 2>&1 || true
      resumed=1
    fi
    sleep 0.5
  done
  log "node $(node_name) did not become idle within ${WAIT_S}s" \
      "(state: '$(node_state || true)', daemons restarted: $restarted)"
  show_logs
  exit 1
}

cmd_start() {
  mkdir -p "$STATE_DIR"
  # The daemons are started with fd 9 closed so they do not inherit (and hold) the lock, and with
  # stdin/stdout/stderr away from the caller's pipes (a caller capturing output would never see EOF).
  exec 9>"$STATE_DIR/.lock"
  flock -w 120 9 || die "could not lock $STATE_DIR/.lock"
  install_packages
  mkdir -p "$STATE_DIR"/{state,spool,log,run}
  chmod 0755 "$STATE_DIR" "$STATE_DIR/spool"
  start_munge           # no-op when munge already works
  write_conf            # rewrites slurm.conf only when its content changes
  if ((CONF_CHANGED)); then
    # Configuration changed (host name, CPU count, new script version): restart with the new one.
    stop_slurm_daemons
  fi
  start_daemons         # no-op when both daemons run and the node is usable
  echo "export SLURM_CONF=$CONF"
}

# ---------------------------------------------------------------------------------------------
stop_pidfiles() {  # stop_pidfiles PIDFILE... : SIGTERM all, wait up to 10 s, then SIGKILL the rest
  local f pid i left
  local -a pids=()
  for f in "$@"; do
    if pid_alive "$f"; then
      pid="$(cat "$f")"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for ((i = 0; i < 50 && ${#pids[@]}; i++)); do
    left=()
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]; then
        left+=("$pid")
      fi
    done
    pids=(${left[@]+"${left[@]}"})
    ((${#pids[@]})) && sleep 0.2
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    log "pid $pid ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -f "$@"
}

stop_slurm_daemons() {
  stop_pidfiles "$STATE_DIR/run/slurmd.pid" "$STATE_DIR/run/slurmctld.pid"
}

cmd_stop() {
  [[ -d "$STATE_DIR" ]] || { log "nothing to stop ($STATE_DIR does not exist)"; return 0; }
  exec 9>"$STATE_DIR/.lock"
  flock -w 120 9 || die "could not lock $STATE_DIR/.lock"
  local -a pidfiles=("$STATE_DIR/run/slurmd.pid" "$STATE_DIR/run/slurmctld.pid")
  # munged only if this script started it (a system munged may serve others).
  if [[ -f "$STATE_DIR/munged.started" ]]; then
    pidfiles+=(/run/munge/munged.pid)
  fi
  stop_pidfiles "${pidfiles[@]}"
  rm -f "$STATE_DIR/munged.started"
  log "stopped"
}

cmd_status() {
  local name f
  for name in slurmctld slurmd; do
    f="$STATE_DIR/run/$name.pid"
    if pid_alive "$f"; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: stopped"; fi
  done
  if munge_works; then echo "munged: running"; else echo "munged: stopped"; fi
  # sinfo retries for MessageTimeout seconds when no controller answers: ask only if one runs.
  if [[ -f "$CONF" ]] && command -v sinfo >/dev/null && pid_alive "$STATE_DIR/run/slurmctld.pid"; then
    SLURM_CONF="$CONF" sinfo || true
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
