#!/usr/bin/env bash
# A real one-node Slurm cluster on localhost, for the tests and CI.
#
#   scripts/local_slurm.sh start    install slurm-wlm + munge (Debian), write the config, start the daemons
#   scripts/local_slurm.sh stop     cancel our jobs, stop the daemons this script started (by recorded PID)
#   scripts/local_slurm.sh status   print whether the cluster is up (exit 0 if up, 1 if not)
#
# Layout (override with environment variables):
#   SLURM_CONF      slurm.conf path; default /etc/slurm/slurm.conf, the path every Slurm command reads
#                   without any environment, so sbatch/srun/submitit need no setup. If you override it,
#                   export the same SLURM_CONF to every process that talks to the cluster.
#   E2MC_SLURM_DIR  directory this script owns: state, spool, logs, PID files, the munge socket;
#                   default /var/lib/e2mc-slurm.
#
# The munge daemon is ours too: it listens on $E2MC_SLURM_DIR/munge/munge.socket (slurm.conf AuthInfo),
# so it neither needs nor disturbs a system munged on /run/munge. The key is /etc/munge/munge.key.
#
# Exit codes: 0 ok, 1 failure (reason and log tail on stderr), 2 usage, 3 this machine cannot host the
# cluster (not root, or no apt-get); the reason is printed as one line on stdout.
set -euo pipefail

readonly CONF="${SLURM_CONF:-/etc/slurm/slurm.conf}"
readonly STATE_DIR="${E2MC_SLURM_DIR:-/var/lib/e2mc-slurm}"
readonly MUNGE_DIR="$STATE_DIR/munge"
readonly MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
readonly MUNGE_KEY=/etc/munge/munge.key
readonly PID_DIR="$STATE_DIR/pids"
readonly LOG_DIR="$STATE_DIR/log"
readonly CONF_MARKER="# Written by e2mc scripts/local_slurm.sh"
readonly PARTITION=debug
readonly START_TIMEOUT_S=60
readonly EXIT_UNSUPPORTED=3
# slurm.conf AuthInfo: our munge socket, and a short credential lifetime because a requeued job waits
# cred_expire + 1 seconds before it may start again (Slurm's default of 120 s makes requeue tests slow).
readonly CRED_EXPIRE_S=20

export SLURM_CONF="$CONF"
NODE_NAME="$(hostname -s)"
readonly NODE_NAME

say() { echo "local_slurm: $*"; }
die() {
    echo "local_slurm: error: $*" >&2
    exit 1
}

# Print the last lines of each daemon log, to explain a failed start.
show_logs() {
    local log
    for log in "$LOG_DIR"/*.log; do
        [[ -f $log ]] || continue
        echo "----- tail of $log -----" >&2
        tail -n 15 "$log" >&2
    done
}

# Where each daemon records its PID. munged runs as the munge user, so it writes into its own directory.
pid_file() {
    if [[ $1 == munged ]]; then echo "$MUNGE_DIR/munged.pid"; else echo "$PID_DIR/$1.pid"; fi
}

# Is the process recorded in <name>'s PID file alive and still the program <name> (not a reused PID)?
# Prints the PID when it is.
recorded_pid() {
    local name=$1 file pid
    file=$(pid_file "$name")
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm && $(</proc/$pid/comm) == "$name" ]] || return 1
    echo "$pid"
}

node_state() { sinfo --noheader --nodes="$NODE_NAME" --format=%T 2>/dev/null | head -n 1; }

# The node is usable: the controller answers and the node is idle, mixed or allocated.
node_usable() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

is_up() {
    recorded_pid munged >/dev/null && recorded_pid slurmctld >/dev/null && recorded_pid slurmd >/dev/null &&
        node_usable
}

check_supported() {
    if [[ $EUID -ne 0 ]]; then
        echo "local Slurm cluster needs root (to install packages and run slurmd); run as root or skip"
        exit "$EXIT_UNSUPPORTED"
    fi
    if ! command -v apt-get >/dev/null; then
        echo "local Slurm cluster needs apt-get (Debian/Ubuntu) to install slurm-wlm and munge"
        exit "$EXIT_UNSUPPORTED"
    fi
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null &&
        command -v munged >/dev/null; then
        return
    fi
    local packages=(slurm-wlm munge) out started=$SECONDS
    say "installing ${packages[*]} with apt-get"
    # Wait for the dpkg lock instead of failing when another apt run holds it.
    local apt=(apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 install "${packages[@]}")
    if ! out=$(DEBIAN_FRONTEND=noninteractive "${apt[@]}" 2>&1); then
        if grep -qE "Unable to locate package|has no installation candidate|Failed to fetch|404 +Not Found" <<<"$out"; then
            say "package lists missing or stale: running apt-get update"
            DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null ||
                die "apt-get update failed"
            out=$(DEBIAN_FRONTEND=noninteractive "${apt[@]}" 2>&1) || {
                echo "$out" >&2
                die "apt-get install ${packages[*]} failed"
            }
        else
            echo "$out" >&2
            die "apt-get install ${packages[*]} failed"
        fi
    fi
    say "installed ${packages[*]} in $((SECONDS - started)) s"
}

ensure_munge_key() {
    if [[ ! -s $MUNGE_KEY ]]; then
        say "creating $MUNGE_KEY"
        install -d -m 0700 -o munge -g munge "$(dirname "$MUNGE_KEY")"
        (umask 077 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none)
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
}

# Write slurm.conf for this machine: the real CPU count and memory from `slurmd -C`, no cgroups,
# no accounting, requeue enabled, finished jobs kept in memory for an hour.
write_conf() {
    if [[ -e $CONF ]] && ! grep -qF "$CONF_MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; move it away or export SLURM_CONF=<another path>"
    fi
    local hardware cpus memory_mb
    hardware=$(slurmd -C 2>/dev/null | head -n 1)
    cpus=$(grep -oP '\bCPUs=\K[0-9]+' <<<"$hardware") || die "cannot read CPUs from 'slurmd -C': $hardware"
    memory_mb=$(grep -oP '\bRealMemory=\K[0-9]+' <<<"$hardware") ||
        die "cannot read RealMemory from 'slurmd -C': $hardware"
    mkdir -p "$(dirname "$CONF")"
    local tmp="$CONF.tmp.$$"
    # Only CPUs= (no sockets/cores/threads) so that CR_CPU hands out single hardware threads: two
    # one-CPU jobs run at once on a two-thread machine. Memory is bookkept, not enforced (no cgroups).
    cat >"$tmp" <<EOF
$CONF_MARKER for a one-node test cluster. Regenerated on each start.
ClusterName=e2mc-local
SlurmctldHost=$NODE_NAME(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=$CRED_EXPIRE_S
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool/slurmd
SlurmctldPidFile=$PID_DIR/slurmctld.pid
SlurmdPidFile=$PID_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Short scheduling intervals: a requeued job starts as soon as its begin time passes.
SchedulerParameters=sched_interval=2,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((memory_mb / cpus))
JobRequeue=1
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
NodeName=$NODE_NAME NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$tmp" "$CONF"
}

wait_until() {
    local what=$1 timeout_s=$2
    shift 2
    local deadline=$((SECONDS + timeout_s))
    until "$@"; do
        ((SECONDS < deadline)) || {
            show_logs
            die "timed out after ${timeout_s} s waiting for $what"
        }
        sleep 0.5
    done
}

munge_works() { munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }
controller_answers() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_registered() { [[ -n $(node_state) && $(node_state) != unknown* ]]; }

start_munged() {
    recorded_pid munged >/dev/null && munge_works && return
    install -d -m 0755 -o munge -g munge "$MUNGE_DIR"
    local args=(--socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" --pid-file="$(pid_file munged)"
        --log-file="$LOG_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed")
    touch "$LOG_DIR/munged.log" && chown munge:munge "$LOG_DIR/munged.log"
    # Run as the munge user, which owns the key (as Debian runs it); no --force needed.
    runuser -u munge -- munged "${args[@]}" </dev/null 9>&- >>"$LOG_DIR/munged.stdout" 2>&1 || {
        show_logs
        die "munged failed to start"
    }
    wait_until "munged" 10 munge_works
}

start_slurmctld() {
    recorded_pid slurmctld >/dev/null && return
    # -i: start even if saved state from an earlier run is unreadable.
    slurmctld -i </dev/null 9>&- >>"$LOG_DIR/slurmctld.stdout" 2>&1 || {
        show_logs
        die "slurmctld failed to start"
    }
    wait_until "slurmctld to answer 'scontrol ping'" 30 controller_answers
}

start_slurmd() {
    recorded_pid slurmd >/dev/null && return
    slurmd </dev/null 9>&- >>"$LOG_DIR/slurmd.stdout" 2>&1 || {
        show_logs
        die "slurmd failed to start"
    }
}

cmd_start() {
    check_supported
    mkdir -p "$STATE_DIR"
    # One start at a time: parallel test sessions may call start together. The daemons must not
    # inherit this descriptor (they would hold the lock forever): each launch closes it with 9>&-.
    exec 9>"$STATE_DIR/start.lock"
    flock -w 300 9 || die "another 'local_slurm.sh start' holds $STATE_DIR/start.lock"
    if command -v sinfo >/dev/null && is_up; then
        say "already up (node $NODE_NAME $(node_state), SLURM_CONF=$CONF)"
        return
    fi
    local started=$SECONDS
    install_packages
    ensure_munge_key
    install -d -m 0755 "$STATE_DIR/ctld" "$STATE_DIR/spool/slurmd" "$PID_DIR" "$LOG_DIR"
    if ! recorded_pid slurmctld >/dev/null; then
        write_conf
    fi
    start_munged
    start_slurmctld
    start_slurmd
    wait_until "node $NODE_NAME to register with slurmctld" "$START_TIMEOUT_S" node_registered
    # A node left down/drained by an earlier run (e.g. killed slurmd) is made schedulable again.
    case "$(node_state)" in
        down* | drain* | fail*)
            say "node $NODE_NAME is $(node_state); resuming it"
            scontrol update nodename="$NODE_NAME" state=resume
            ;;
    esac
    wait_until "node $NODE_NAME to become idle" "$START_TIMEOUT_S" node_usable
    say "up in $((SECONDS - started)) s: node $NODE_NAME $(node_state), partition $PARTITION, SLURM_CONF=$CONF"
}

stop_daemon() {
    local name=$1 pid
    pid=$(recorded_pid "$name") || {
        rm -f "$(pid_file "$name")"
        return 0
    }
    kill -TERM "$pid"
    local deadline=$((SECONDS + 15))
    while [[ -e /proc/$pid ]] && ((SECONDS < deadline)); do sleep 0.2; done
    if [[ -e /proc/$pid ]]; then
        say "$name ($pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid"
    fi
    rm -f "$(pid_file "$name")"
    say "stopped $name ($pid)"
}

cmd_stop() {
    # Our jobs would outlive slurmd as orphan slurmstepd processes: cancel them first (only this user's;
    # anyone else's jobs on the cluster are theirs to manage).
    if recorded_pid slurmctld >/dev/null && controller_answers; then
        local jobs
        jobs=$(squeue --noheader --user="$(id -un)" --format=%i 2>/dev/null | tr '\n' ' ')
        if [[ -n ${jobs// /} ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086  # one argument per job id
            scancel $jobs || true
            sleep 2
        fi
    fi
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
}

cmd_status() {
    local name pid
    for name in munged slurmctld slurmd; do
        if pid=$(recorded_pid "$name"); then say "$name running (pid $pid)"; else say "$name not running"; fi
    done
    if command -v sinfo >/dev/null && is_up; then
        say "up: node $NODE_NAME $(node_state), SLURM_CONF=$CONF"
    else
        say "down"
        return 1
    fi
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
