#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests/workflow/test_slurm.py.
#
#   tests/slurm/cluster.sh install          apt-get the Debian packages (munge, slurmctld, slurmd, slurm-client)
#   tests/slurm/cluster.sh start [DIR]      munged, slurm.conf, slurmctld, slurmd; wait for an idle node
#   tests/slurm/cluster.sh stop [DIR]       stop the daemons that `start` started
#
# DIR (or $PSA_SLURM_DIR, default /tmp/psa-slurm) holds the state, spool, pid and log
# files; `stop` needs the same DIR as `start`. Needs root and no systemd (the daemons
# are started by hand). The recipe is written down in README.md (SLURM).
#
# The cluster has two partitions on the one node, named as in workflow/profiles/slurm:
# `cpu` (the default) and `gpu`. The node declares one FAKE GPU (gres.conf maps it to
# /dev/null): enough for SLURM to schedule `--gpus=1` and set CUDA_VISIBLE_DEVICES,
# not a device anything can compute on.
set -euo pipefail

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

MARKER="# written by tests/slurm/cluster.sh"
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
COMMAND=${1:-}
DIR=${2:-${PSA_SLURM_DIR:-/tmp/psa-slurm}}
HOST=$(hostname -s)

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it starts munged, slurmctld and slurmd)"
}

# The pid in a pid file if that process is alive, else nothing.
live_pid() {
    local pid
    [[ -f $1 ]] || return 0
    pid=$(cat "$1")
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

install_packages() {
    need_root
    command -v apt-get >/dev/null || die "apt-get not found: install munge and SLURM (slurmctld, slurmd, client) by hand"
    local log
    log=$(mktemp)
    echo "cluster.sh: installing munge slurmctld slurmd slurm-client (apt-get) ..."
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends munge slurmctld slurmd slurm-client; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "apt-get install failed (full log: $log)"
    fi
    rm -f "$log"
    command -v sbatch >/dev/null || die "sbatch is still missing after apt-get install"
    echo "cluster.sh: installed slurm $(dpkg-query -W -f '${Version}' slurmctld)"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        echo "cluster.sh: munged already running"
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        # Debian's postinst normally creates it.
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none
    fi
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge
    chmod 0600 /etc/munge/munge.key
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    touch "$DIR/munged.ours" # so that `stop` stops only a munged that `start` started
    local i
    for i in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "munged started but munge -n | unmunge fails (see /var/log/munge/munged.log)"
}

write_config() {
    local file
    for file in "$CONF" "$GRES_CONF"; do
        if [[ -f $file ]] && ! grep -qF "$MARKER" "$file"; then
            die "$file exists and was not written by this script; refusing to overwrite a real cluster's configuration"
        fi
    done
    if ! getent hosts "$HOST" >/dev/null; then
        echo "127.0.0.1 $HOST" >>/etc/hosts
        echo "cluster.sh: added $HOST to /etc/hosts"
    fi
    # slurmd -C: "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 ... RealMemory=24105"
    local node memory
    node=$(slurmd -C | head -n 1)
    [[ $node == NodeName=* ]] || die "slurmd -C printed no node line: $node"
    memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    [[ -n $memory ]] || die "no RealMemory in slurmd -C output: $node"
    node=$(sed -e "s/^NodeName=[^ ]*/NodeName=$HOST/" -e "s/RealMemory=[0-9]*/RealMemory=$((memory * 85 / 100))/" <<<"$node")
    mkdir -p /etc/slurm
    cat >"$CONF" <<EOF
$MARKER (state under $DIR)
ClusterName=psa-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, one job without --mem takes the whole node's memory.
DefMemPerCPU=1000
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
# Finished jobs stay visible to squeue/scontrol for 5 minutes: the Snakemake plugin
# polls squeue (no slurmdbd here) and the test reads scontrol show job.
MinJobAge=300
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# Jobs show the GPU as TresPerJob=gres:gpu:N; AccountingStorageTRES=gres/gpu (to list
# it in TRES too) would need slurmdbd: without it slurmctld exits at start.
GresTypes=gpu
$node NodeAddr=127.0.0.1 Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
EOF
    cat >"$GRES_CONF" <<EOF
$MARKER: a fake GPU, for scheduling only
NodeName=$HOST Name=gpu File=/dev/null
EOF
}

wait_idle() {
    local i daemon states=""
    for i in $(seq 60); do
        for daemon in slurmctld slurmd; do
            # A daemon writes its pid file a moment after it forks: give it 10 s.
            if [[ -z $(live_pid "$DIR/$daemon.pid") ]] && { [[ -f $DIR/$daemon.pid ]] || ((i > 10)); }; then
                tail -n 5 "$DIR/log/$daemon.log" >&2 || true
                die "$daemon exited (log: $DIR/log/$daemon.log)"
            fi
        done
        states=$(sinfo -h -o %t 2>/dev/null | sort -u | tr '\n' ' ' || true)
        [[ $states == "idle " ]] && return
        sleep 1
    done
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    die "node not idle after 60 s (sinfo says: ${states:-nothing}); logs in $DIR/log"
}

start_cluster() {
    need_root
    command -v slurmctld >/dev/null || die "SLURM is not installed; run: $0 install"
    mkdir -p "$DIR/log"
    start_munge
    if [[ -n $(live_pid "$DIR/slurmctld.pid") && -n $(live_pid "$DIR/slurmd.pid") ]]; then
        echo "cluster.sh: slurmctld and slurmd already running (state in $DIR)"
    else
        stop_slurm
        write_config
        # A fresh state each start: no jobs or node states left from an earlier run.
        rm -rf "$DIR/state" "$DIR/spool"
        mkdir -p "$DIR/state" "$DIR/spool"
        slurmctld || die "slurmctld did not start (log: $DIR/log/slurmctld.log)"
        slurmd || die "slurmd did not start (log: $DIR/log/slurmd.log)"
    fi
    wait_idle
    timeout 30 srun -N1 true || die "srun -N1 true failed; logs in $DIR/log"
    echo "cluster.sh: SLURM up on $HOST (partitions: $(sinfo -h -o %P | tr '\n' ' ')); state in $DIR"
}

# Kill the process in a pid file and wait for it to exit.
stop_pid_file() {
    local name=$1 file=$2 pid i
    pid=$(live_pid "$file")
    if [[ -z $pid ]]; then
        rm -f "$file"
        return
    fi
    kill "$pid"
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "cluster.sh: $name ($pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
    echo "cluster.sh: stopped $name ($pid)"
}

stop_slurm() {
    stop_pid_file slurmd "$DIR/slurmd.pid"
    stop_pid_file slurmctld "$DIR/slurmctld.pid"
}

stop_cluster() {
    need_root
    stop_slurm
    if [[ -f $DIR/munged.ours ]]; then
        stop_pid_file munged /run/munge/munged.pid
        rm -f "$DIR/munged.ours"
    fi
}

case $COMMAND in
install) install_packages ;;
start) start_cluster ;;
stop) stop_cluster ;;
*) die "usage: $0 install | start [DIR] | stop [DIR]   (DIR defaults to \$PSA_SLURM_DIR or /tmp/psa-slurm)" ;;
esac
