#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests marked `slurm`
# (tests/test_slurm.py) and for trying `hydra/launcher=slurm` by hand. Run as root.
#
#   bash .ci/slurm_cluster.sh start    # install the packages if missing, start munged, slurmctld, slurmd;
#                                      # returns once `sinfo` shows the node idle
#   bash .ci/slurm_cluster.sh status   # exit 0 when a scheduler answers and the node is up
#   bash .ci/slurm_cluster.sh stop     # stop the daemons this script started (by pid), remove its slurm.conf
#
# Debian's SLURM (22.05: slurmctld, slurmd, slurm-client) with munge for
# authentication. munged runs as the munge user with the key the package
# created (/etc/munge/munge.key). The node is this machine (`hostname -s`),
# with its CPUs and a bit under its available memory; one default partition,
# no accounting (submitit then logs "Bypassing sacct error" on each poll and
# reads the job's result files instead), no cgroups (proctrack/linuxproc,
# task/none). State, spool, logs and pid files live under $GPO_SLURM_DIR
# (default /tmp/gpo-slurm); the config is /etc/slurm/slurm.conf, where the
# clients (sinfo, sbatch, srun) look for it, and is only ever written when
# absent or written by this script. Idempotent: `start` on a running cluster
# does nothing, `stop` on a stopped one does nothing.
set -euo pipefail

DIR=${GPO_SLURM_DIR:-/tmp/gpo-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# Written by gpo .ci/slurm_cluster.sh"
NODE=$(hostname -s)
PARTITION=debug
WAIT_S=${GPO_SLURM_WAIT_S:-60}

die() { echo "slurm_cluster: $*" >&2; exit 1; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
ours() { [[ -f $CONF ]] && head -n1 "$CONF" | grep -qF "$MARK"; }
node_state() { timeout 20 sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n1; }

status() {
    local state
    state=$(node_state) || true
    if [[ -z $state ]]; then
        echo "no scheduler answers (sinfo)"
        return 1
    fi
    echo "node $NODE: $state$(ours && echo " (started by this script, $DIR)")"
    [[ $state == idle* || $state == mix* || $state == alloc* ]]
}

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null &&
        command -v munged >/dev/null && return
    [[ $(id -u) == 0 ]] || die "the SLURM packages are missing and installing them needs root"
    echo "slurm_cluster: installing slurmctld slurmd slurm-client munge (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged answers already (ours from an earlier start, or the machine's own): use it
    fi
    [[ -f /etc/munge/munge.key ]] || die "no /etc/munge/munge.key (the munge package creates it): reinstall munge"
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- munged
    cp /run/munge/munged.pid "$DIR/run/munged.pid"
}

write_conf() {
    local cpus mem_mb
    cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')  # what slurmd finds (nproc follows OMP_NUM_THREADS)
    # A bit under the available memory: slurmd drains a node whose RealMemory exceeds what it finds.
    mem_mb=$(awk '/^MemAvailable:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$(dirname "$CONF")"
    cat >"$CONF" <<EOF
$MARK: a one-node cluster for tests (\`bash .ci/slurm_cluster.sh stop\` removes it).
ClusterName=gpo
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire + 1 s before it may start again (default 120 s; slurm refuses under 5).
AuthInfo=cred_expire=5
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$NODE CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    if status >/dev/null; then
        echo "slurm_cluster: already running: $(status)"
        return
    fi
    if [[ -f $CONF ]] && ! ours; then
        die "$CONF exists and was not written by this script: a real cluster's config is left alone"
    fi
    [[ $(id -u) == 0 ]] || die "starting the daemons needs root (SlurmUser=root)"
    local started=$SECONDS
    install_packages
    stop_daemons  # leftovers of an earlier start that no longer answers
    rm -rf "$DIR/state" "$DIR/spool"  # a fresh controller: no jobs of an earlier session
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
    start_munge
    write_conf
    slurmctld || die "slurmctld did not start: $(tail -n 5 "$DIR/log/slurmctld.log" 2>/dev/null)"
    slurmd || die "slurmd did not start: $(tail -n 5 "$DIR/log/slurmd.log" 2>/dev/null)"
    local waiting=$SECONDS
    until status >/dev/null; do
        if (( SECONDS - waiting > WAIT_S )); then
            tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
            die "node $NODE not idle after ${WAIT_S} s ($(node_state || true)); logs above, in $DIR/log"
        fi
        sleep 0.5
    done
    echo "slurm_cluster: up in $((SECONDS - started)) s (installing included): $(status); logs in $DIR/log"
}

stop_daemons() {
    local name pidfile pid
    for name in slurmd slurmctld munged; do
        pidfile=$DIR/run/$name.pid
        alive "$pidfile" || { rm -f "$pidfile"; continue; }
        pid=$(cat "$pidfile")
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        rm -f "$pidfile"
        echo "slurm_cluster: stopped $name ($pid)"
    done
}

stop() {
    stop_daemons
    if ours; then rm -f "$CONF"; fi
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
