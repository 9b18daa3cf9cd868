#!/usr/bin/env bash
# Run the smoke profile for real through the SLURM profile, on a one-node SLURM of this machine,
# and check that it gives the same results as a plain local run.
#
#   sudo workflow/cluster/local-slurm.sh            (or: sudo make slurm-check)
#
# On a Debian-like machine (apt-get), as root, it
#   1. installs slurm-wlm, slurmctld, slurmd, slurmdbd, munge and mariadb-server if missing;
#   2. writes a one-node slurm.conf (CPUs and memory as `slurmd -C` reads them from the machine)
#      and a slurmdbd.conf into its own folder, never into /etc/slurm;
#   3. starts munge (unless already running), a private MariaDB for the accounting database,
#      slurmdbd, slurmctld and slurmd, and waits until `sinfo` shows the node idle;
#   4. copies the repository's files (tracked and untracked-not-ignored, as they are now) twice
#      and runs in one copy
#        snakemake --profile workflow/profiles/slurm --configfile config/smoke.yaml --forceall
#      with every `gpu` count of the profile set to SLURMCHECK_GPU (0: a CPU-only node accepts
#      the jobs), and in the other the same DAG plainly on this machine;
#   5. compares every result CSV of the two runs (measured time/memory columns aside), prints
#      the jobs submitted and a `sacct` summary of their states, and stops every daemon it
#      started (also when interrupted).
#
# It refuses, before changing anything, when: not root; no apt-get/dpkg; a SLURM daemon (or
# MariaDB on its port) is already running that it did not start; /etc/slurm/slurm.conf exists
# (job steps would read that other cluster's config, see below); the project's .venv is missing.
#
# Settings (environment): SLURMCHECK_DIR (work folder, default /tmp/slurmcheck, recreated),
# SLURMCHECK_JOBS (jobs at a time, default 2), SLURMCHECK_GPU (GPUs per GPU job, default 0),
# SLURMCHECK_CONFIG (default config/smoke.yaml), SLURMCHECK_PORT (first of 4 ports, default
# 6917), SLURMCHECK_KEEP=1 (leave the daemons running, for poking at the cluster afterwards).
#
# Exit status: 0 identical results, 1 a run failed or results differ, 2 refused.

set -euo pipefail
umask 022

# All of it in one function called on the last line, so that bash reads the whole file before
# running any of it: editing the file during a (long) run cannot change what that run does.
main() {

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${SLURMCHECK_DIR:-/tmp/slurmcheck}
JOBS=${SLURMCHECK_JOBS:-2}
GPU=${SLURMCHECK_GPU:-0}
CONFIG=${SLURMCHECK_CONFIG:-config/smoke.yaml}
PORT=${SLURMCHECK_PORT:-6917}
CTLD_PORT=$PORT SLURMD_PORT=$((PORT + 1)) DB_PORT=$((PORT + 2)) DBD_PORT=$((PORT + 3))
PACKAGES=(slurm-wlm slurmctld slurmd slurmdbd munge mariadb-server)
STATE=$WORK/cluster
MARKER=$WORK/.local-slurm-check
VENV=$REPO/.venv

say() { printf '[local-slurm %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
refuse() {
    printf 'local-slurm.sh: refused: %s\n' "$*" >&2
    exit 2
}

# ------------------------------------------------------------------ refusals, before any change
[[ $(id -u) == 0 ]] || refuse "must run as root: it installs Debian packages and starts the SLURM \
daemons (try: sudo $0)"
{ command -v apt-get && command -v dpkg-query; } >/dev/null ||
    refuse "needs a Debian-like machine with apt-get and dpkg to install SLURM 22.05; install \
slurm-wlm, slurmdbd, munge and mariadb-server by other means and use a real cluster instead"
[[ -x $VENV/bin/snakemake ]] ||
    refuse "no project environment at $VENV: run 'make install' first"
"$VENV/bin/python" -c "import snakemake_executor_plugin_slurm" 2>/dev/null ||
    refuse "$VENV lacks snakemake-executor-plugin-slurm (it is in requirements.lock: make install)"
[[ -f $REPO/$CONFIG ]] || refuse "no config file $REPO/$CONFIG"
[[ $JOBS =~ ^[1-9][0-9]*$ && $GPU =~ ^[0-9]+$ && $PORT =~ ^[1-9][0-9]*$ ]] ||
    refuse "SLURMCHECK_JOBS must be >= 1, SLURMCHECK_GPU >= 0, SLURMCHECK_PORT a port number"
if [[ -e $WORK && ! -e $MARKER ]]; then
    refuse "$WORK exists and is not a folder of this script: choose SLURMCHECK_DIR"
fi

# A daemon of ours left behind by a killed earlier run is stopped; anyone else's means another
# SLURM (or database) owns this machine, which this script must not disturb.
ours() { [[ -f $1 ]] && [[ $(cat "$1" 2>/dev/null) == "$2" ]]; }
for daemon in slurmctld slurmd slurmdbd; do
    for pid in $(pgrep -x "$daemon" || true); do
        if ours "$STATE/run/$daemon.pid" "$pid"; then
            say "stopping $daemon (pid $pid) left behind by an earlier run of this script"
            kill "$pid"
        else
            config=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^SLURM_CONF=//p')
            refuse "$daemon is already running (pid $pid, config ${config:-/etc/slurm/slurm.conf}) \
and not started by this script; it will not start a second SLURM next to it. Stop that one, or \
use that cluster directly"
        fi
    done
done
if [[ -e /etc/slurm/slurm.conf || -e /etc/slurm-llnl/slurm.conf ]]; then
    refuse "/etc/slurm/slurm.conf exists (another cluster's config). The snakemake job step \
drops SLURM_CONF before its nested srun, which then reads /etc/slurm/slurm.conf, so the check \
cannot use its own config here; it leaves that file alone. Move it aside or use a clean machine"
fi
if [[ -L /run/slurm/conf && $(readlink /run/slurm/conf) != "$STATE"/* ]]; then
    refuse "/run/slurm/conf points to another cluster's config cache ($(readlink /run/slurm/conf))"
fi
for port in "$CTLD_PORT" "$SLURMD_PORT" "$DB_PORT" "$DBD_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        refuse "port $port is in use: set SLURMCHECK_PORT to the first of 4 free ports"
    fi
done

# ------------------------------------------------------------------ packages
missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$package")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    # The packages' own services would start at install with /etc configs; this check runs
    # private daemons only, so service starts are denied for the duration of the install.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
    fi
    apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >"$WORK.apt.log" 2>&1; }
    apt_install || { apt-get update -q >/dev/null 2>&1 && apt_install; } || {
        ((added_policy)) && rm -f "$policy"
        refuse "apt-get install ${missing[*]} failed (see $WORK.apt.log)"
    }
    ((added_policy)) && rm -f "$policy"
fi
version=$(slurmd -V)
[[ $version == *22.05* ]] || say "note: $version, not the 22.05 this script was written for"

# ------------------------------------------------------------------ teardown (trap)
started=()   # "name pidfile" of every daemon this run started, in start order
stop_all() {
    local status=$?
    trap - EXIT INT TERM
    if [[ ${SLURMCHECK_KEEP:-0} == 1 ]]; then
        say "SLURMCHECK_KEEP=1: daemons left running (SLURM_CONF=$STATE/etc/slurm.conf)"
        exit "$status"
    fi
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
        read -r name pidfile <<<"${started[i]}"
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if [[ -n $pid ]] && kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            say "stopped $name (pid $pid)"
        fi
    done
    # slurmd in configless mode links its config cache here; it is ours, so it goes too
    if [[ -L /run/slurm/conf && $(readlink /run/slurm/conf) == "$STATE"/* ]]; then
        rm -f /run/slurm/conf
    fi
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_for() {  # seconds, description, command...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 2))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "local-slurm.sh: $what did not come up within ${seconds}s (logs: $STATE/log)" >&2
    exit 1
}

# ------------------------------------------------------------------ configuration
rm -rf "$WORK"
mkdir -p "$WORK" "$STATE"/{etc,run,log,spool,save,db,dbrun}
touch "$MARKER"
node_line=$(slurmd -C | head -1)   # NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
node=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node_line")
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
memory=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
[[ -n $node && -n $cpus && -n $memory ]] || { echo "cannot parse 'slurmd -C': $node_line" >&2; exit 1; }
db_password=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')

cat >"$STATE/etc/slurm.conf" <<EOF
# One-node cluster of local-slurm.sh (generated; lives and dies with one check run).
ClusterName=sngradcheck
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmctldParameters=enable_configless
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/save
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# no cgroups: containers and VMs without a delegated cgroup tree still work
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
MinJobAge=600
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$db_password
StorageLoc=slurm_acct_db
EOF
chmod 600 "$STATE/etc/slurmdbd.conf"
export SLURM_CONF=$STATE/etc/slurm.conf
say "node $node: $cpus CPUs, $memory MB; config $SLURM_CONF"

# ------------------------------------------------------------------ daemons
if pgrep -x munged >/dev/null; then
    say "munged already running: using it"
else
    [[ -s /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null ||
        { dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none; }; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    started+=("munged /run/munge/munged.pid")
fi
wait_for 20 munge sh -c 'munge -n | unmunge'

chown mysql:mysql "$STATE/db" "$STATE/dbrun"
mariadb-install-db --no-defaults --user=mysql --datadir="$STATE/db" --skip-test-db \
    --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1
runuser -u mysql -- /usr/sbin/mariadbd --no-defaults --datadir="$STATE/db" \
    --socket="$STATE/dbrun/mysql.sock" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --pid-file="$STATE/dbrun/mariadb.pid" --log-error="$STATE/dbrun/mariadb.log" \
    --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
started+=("mariadbd $STATE/dbrun/mariadb.pid")
db() { mariadb --no-defaults --socket="$STATE/dbrun/mysql.sock" -u root "$@"; }
wait_for 60 MariaDB db -e "select 1"
db -e "create database slurm_acct_db;
       create user 'slurm'@'127.0.0.1' identified by '$db_password';
       grant all on slurm_acct_db.* to 'slurm'@'127.0.0.1';"

slurmdbd
started+=("slurmdbd $STATE/run/slurmdbd.pid")
wait_for 60 slurmdbd sacctmgr -n list cluster
slurmctld
started+=("slurmctld $STATE/run/slurmctld.pid")
wait_for 60 slurmctld scontrol ping
# configless slurmd: it fetches the config from slurmctld and links its cache at
# /run/slurm/conf, where a job step's srun finds it without SLURM_CONF (which snakemake's job
# step executor removes from the environment of its nested srun)
env -u SLURM_CONF slurmd --conf-server "127.0.0.1:$CTLD_PORT"
started+=("slurmd $STATE/run/slurmd.pid")
node_idle() { [[ $(sinfo -h -N -n "$node" -o %T) == idle ]]; }
wait_for 120 "node $node (idle in sinfo)" node_idle
sinfo

# ------------------------------------------------------------------ the two runs
copy_repo() {  # the repository's files as they are now (tracked + untracked, not ignored)
    mkdir -p "$1"
    git -C "$REPO" ls-files -z --cached --others --exclude-standard |
        (cd "$REPO" && while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done) |
        tar -C "$REPO" --null -T - -cf - | tar -C "$1" -xf -
    ln -s "$VENV" "$1/.venv"
}
copy_repo "$WORK/slurm"
copy_repo "$WORK/local"
# Each copy imports its own sources (the editable install points at $REPO/src); sbatch's
# --export=ALL carries PYTHONPATH into the jobs, which checks that job steps get the
# submitting environment.
# The profile's resources restated on the command line with the GPU counts replaced (a
# command-line list replaces the profile's instead of adding to it) and the partition named,
# as a site names its own.
mapfile -t overrides < <("$VENV/bin/python" "$REPO/workflow/cluster/slurmcheck.py" overrides \
    "$REPO/workflow/profiles/slurm/config.yaml" --gpu "$GPU" --partition local)
((${#overrides[@]})) || { echo "local-slurm.sh: no resource overrides from the profile" >&2; exit 1; }
say "resources: ${overrides[*]}"

start=$(date -u +%Y-%m-%dT%H:%M:%S)
say "SLURM run (-j $JOBS) in $WORK/slurm"
t0=$(date +%s)
slurm_status=0
(cd "$WORK/slurm" && PYTHONPATH=$WORK/slurm/src "$VENV/bin/snakemake" \
    --profile workflow/profiles/slurm --configfile "$CONFIG" --jobs "$JOBS" --forceall \
    --cores "$cpus" --slurm-init-seconds-before-status-checks 5 "${overrides[@]}" \
    >"$WORK/slurm.log" 2>&1) || slurm_status=$?
slurm_wall=$(($(date +%s) - t0))
say "SLURM run: exit $slurm_status, ${slurm_wall}s wall (log $WORK/slurm.log)"

say "local run (--cores $JOBS) in $WORK/local"
t0=$(date +%s)
local_status=0
(cd "$WORK/local" && PYTHONPATH=$WORK/local/src "$VENV/bin/snakemake" \
    --cores "$JOBS" --configfile "$CONFIG" --forceall >"$WORK/local.log" 2>&1) || local_status=$?
local_wall=$(($(date +%s) - t0))
say "local run: exit $local_status, ${local_wall}s wall (log $WORK/local.log)"

# ------------------------------------------------------------------ report
submitted=$(grep -c "has been submitted with SLURM jobid" "$WORK/slurm.log" || true)
say "jobs submitted by snakemake: $submitted"
say "sacct: states of the jobs since $start"
sacct -X -n -P -S "$start" -o State | sort | uniq -c | sed 's/^/    /'
say "sacct: jobs per rule (rule, state, count)"
sacct -X -n -P -S "$start" -o Comment%200,State |
    sed 's/^rule_\([A-Za-z0-9_]*\)_wildcards_[^|]*|/\1|/; s/^rule_\([A-Za-z0-9_]*\)|/\1|/' |
    sort | uniq -c | sed 's/^/    /'
say "sacct: every job as SLURM saw it"
sacct -X -S "$start" -o JobID,Comment%50,State,Elapsed,AllocCPUS,ReqMem,TimelimitRaw |
    sed 's/^/    /'
if ((slurm_status || local_status)); then
    say "a run failed (SLURM $slurm_status, local $local_status): see the logs above"
    tail -n 25 "$WORK/slurm.log" "$WORK/local.log"
    exit 1
fi
say "comparing result CSVs (local run = expected)"
"$VENV/bin/python" "$REPO/workflow/cluster/slurmcheck.py" compare "$WORK/local" "$WORK/slurm"
}

main "$@"
