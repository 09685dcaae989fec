#!/bin/bash
# A real one-node Slurm cluster on this machine, for development and CI (Debian 12, Slurm 22.05, as root,
# without systemd). Installs Debian's packages, writes a one-node config with fake GPUs, starts munged,
# slurmctld and slurmd, records their PIDs, waits until the node is idle and checks it with `srun hostname`.
# Safe to re-run: what is installed, configured or running is kept. Stop it with stop.sh.
#
# Settings (environment):
#   LOCAL_SLURM_DIR  state, logs, PID files, fake GPU devices    (default /tmp/le5-slurm)
#   SLURM_ETC        where slurm.conf and gres.conf go           (default /etc/slurm, where the clients look)
#   FAKE_GPUS        fake GPUs on the node (0: none)             (default 2)
#   SACCT_SHIM       where the sacct shim is installed ("": none) (default /usr/local/bin/sacct)
set -euo pipefail

BASE=${LOCAL_SLURM_DIR:-/tmp/le5-slurm}
ETC=${SLURM_ETC:-/etc/slurm}
FAKE_GPUS=${FAKE_GPUS:-2}
SACCT_SHIM=${SACCT_SHIM-/usr/local/bin/sacct}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SECONDS=0
log() { echo "[local-slurm +${SECONDS}s] $*"; }
# alive PIDFILE NAME: the recorded process exists and is the daemon we started (not a reused PID)
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && [ "$(ps -p "$(cat "$1")" -o comm=)" = "$2" ]; }

[ "$(id -u)" = 0 ] || { echo "start.sh: run as root (it installs packages and starts daemons)" >&2; exit 1; }

# ---- packages ------------------------------------------------------------------------------------
missing=""
for p in slurmctld slurmd slurm-client munge; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing:$missing"
  # Without systemd the packages' scripts start nothing; this script starts the daemons below.
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 $missing >/dev/null
  log "packages installed"
fi
mkdir -p "$BASE"/{state,spool,log,run,dev} "$ETC"

# ---- munge (authentication between the Slurm daemons and clients) ---------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge && chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  # setpriv execs munged (no fork), so $! is munged's own PID
  nohup setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F \
    >"$BASE/log/munged.out" 2>&1 </dev/null &
  echo $! >"$BASE/run/munged.pid"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || { echo "munged did not start:"; cat "$BASE/log/munged.out"; exit 1; }
fi

# ---- configuration ---------------------------------------------------------------------------------
HOST=$(hostname -s)
# slurmd -C prints this node's layout; give Slurm 95% of the memory it sees
read -r SOCKETS CORES THREADS MEM < <(slurmd -C | head -1 | sed -E \
  's/.*SocketsPerBoard=([0-9]+) CoresPerSocket=([0-9]+) ThreadsPerCore=([0-9]+) RealMemory=([0-9]+).*/\1 \2 \3 \4/')
MEM=$((MEM * 95 / 100))
GRES_TYPES="" GRES_NODE=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  GRES_TYPES="GresTypes=gpu" GRES_NODE="Gres=gpu:$FAKE_GPUS"
  # gres/gpu drops a GPU without File= and refuses plain files: inert character devices with
  # /dev/null's numbers work. Jobs get CUDA_VISIBLE_DEVICES, but these are not CUDA devices.
  for ((i = 0; i < FAKE_GPUS; i++)); do [ -c "$BASE/dev/gpu$i" ] || mknod "$BASE/dev/gpu$i" c 1 3; done
fi
conf=$(mktemp)
cat >"$conf" <<CONF
# written by slurm/local-cluster/start.sh: one node, no accounting daemon (see the sacct shim)
ClusterName=le5local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again only after the job credential lifetime (default 120 s); short here
# so that the requeue tests do not sit idle.
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
InactiveLimit=0
MinJobAge=3600
KillWait=5
Waittime=0
$GRES_TYPES
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) Boards=1 SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
restart=0
if ! cmp -s "$conf" "$ETC/slurm.conf"; then
  [ -f "$ETC/slurm.conf" ] && restart=1
  cp "$conf" "$ETC/slurm.conf" && log "wrote $ETC/slurm.conf"
fi
rm -f "$conf"
if [ "$FAKE_GPUS" -gt 0 ]; then
  gres="NodeName=$HOST Name=gpu File=$BASE/dev/gpu[0-$((FAKE_GPUS - 1))]"
  [ "$(cat "$ETC/gres.conf" 2>/dev/null)" = "$gres" ] || { echo "$gres" >"$ETC/gres.conf"; restart=1; }
elif [ -f "$ETC/gres.conf" ]; then
  rm -f "$ETC/gres.conf"; restart=1
fi

# ---- sacct shim: without accounting, submitit would wait forever on a job that died ----------------
[ -z "$SACCT_SHIM" ] || install -D -m 755 "$HERE/sacct-shim.sh" "$SACCT_SHIM"

# ---- daemons ------------------------------------------------------------------------------------------
if [ "$restart" = 1 ]; then
  for d in slurmd slurmctld; do
    if alive "$BASE/run/$d.pid" "$d"; then
      pid=$(cat "$BASE/run/$d.pid"); log "configuration changed: stopping $d ($pid)"; kill "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
fi
if ! alive "$BASE/run/slurmctld.pid" slurmctld; then
  log "starting slurmctld"
  nohup /usr/sbin/slurmctld -D -i >"$BASE/log/slurmctld.out" 2>&1 </dev/null &
  echo $! >"$BASE/run/slurmctld.pid"
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
  scontrol ping | grep -q UP || { echo "slurmctld did not start:"; tail -20 "$BASE/log/slurmctld.log"; exit 1; }
fi
if ! alive "$BASE/run/slurmd.pid" slurmd; then
  log "starting slurmd"
  nohup /usr/sbin/slurmd -D >"$BASE/log/slurmd.out" 2>&1 </dev/null &
  echo $! >"$BASE/run/slurmd.pid"
fi

# ---- wait until the node takes jobs -------------------------------------------------------------------
state=""
for _ in $(seq 150); do
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated) break ;;
    drain*|inval*|down*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.2
done
case "$state" in
  idle|mixed|allocated) ;;
  *) echo "node $HOST is '$state'"; sinfo -R; tail -20 "$BASE/log/slurmd.log" "$BASE/log/slurmctld.log"; exit 1 ;;
esac
out=$(timeout 60 srun -N1 -n1 hostname)
log "cluster up: node $HOST ($state), srun hostname -> $out; PIDs: munged $(cat "$BASE/run/munged.pid" 2>/dev/null || echo '(already running)') slurmctld $(cat "$BASE/run/slurmctld.pid") slurmd $(cat "$BASE/run/slurmd.pid")"
