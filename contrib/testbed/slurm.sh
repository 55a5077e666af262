#!/usr/bin/env bash
# As root: a single-host Slurm cluster (slurmctld + slurmd on this machine, munge auth) from
# Debian's packages, for the Slurm backend's tests (issue 9). Idempotent: a running cluster is
# left as it is. Settings that work in a sandbox without systemd: cgroup v1 tracking and
# confinement, accounting through slurmdbd on a local MariaDB, cons_tres with CR_Core_Memory.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || tb_die "run as root"

missing=()
for p in slurm-wlm munge sudo slurmdbd mariadb-server; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    tb_apt_install "${missing[@]}"
fi

# the node-failure test may take the node down and back up, and the controller tests may stop,
# freeze, thaw and start slurmctld, as an administrator (or an overloaded controller) would;
# nothing else: the test user gets exactly these six commands as root
cat > /etc/sudoers.d/miniwdl-podman-slurm-test <<SUDO
$TB_USER ALL=(root) NOPASSWD: /usr/bin/scontrol update nodename=$(hostname -s) state=down reason=miniwdl-podman-test, /usr/bin/scontrol update nodename=$(hostname -s) state=resume, /usr/bin/pkill -x slurmctld, /usr/bin/pkill -STOP -x slurmctld, /usr/bin/pkill -CONT -x slurmctld, /usr/sbin/slurmctld
SUDO
chmod 440 /etc/sudoers.d/miniwdl-podman-slurm-test

# munge: a key, then the daemon as the munge user
install -d -o munge -g munge -m 700 /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged --force

# accounting (slurmdbd on MariaDB): a job's final state from sacct once the controller has
# forgotten it, and its MaxRSS/TotalCPU for the usage records
if ! mysqladmin ping >/dev/null 2>&1; then
    install -d -o mysql -g mysql /run/mysqld
    # no systemd here: the init script (it waits until the server answers)
    /etc/init.d/mariadb start >/dev/null
fi
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'mwp-slurmdb';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
cat > /etc/slurm/slurmdbd.conf <<CONF
# written by miniwdl_podman contrib/testbed/slurm.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=mwp-slurmdb
StorageLoc=slurm_acct_db
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
CONF
chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 600 /etc/slurm/slurmdbd.conf
install -d -o slurm -g slurm /var/log/slurm
pgrep -x slurmdbd >/dev/null || slurmdbd

host=$(hostname -s)
# the node claims more CPUs and memory than this machine has (config_overrides), so that the
# tests can show tasks sized beyond the login node (which is this same machine)
cpus=8
mem_mb=65536
install -d /etc/slurm
install -d -o slurm -g slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
# the site Epilog of the README (removes a job's node store), with the pattern the tests use
install -d /etc/slurm/epilog.d
install -m 755 "$here/../slurm/epilog.sh" /etc/slurm/epilog.d/miniwdl-podman.sh
printf 'NODE_STORAGE=/tmp/mwp-epi-%%u-%%j\n' > /etc/default/miniwdl-podman-epilog
cat > /etc/slurm/slurm.conf <<CONF
# written by miniwdl_podman contrib/testbed/slurm.sh: one host is controller and node
ClusterName=miniwdl-podman-test
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MpiDefault=none
SlurmdParameters=config_overrides
# quick kills and a short memory of finished jobs, for the fault tests
KillWait=5
MinJobAge=300
Epilog=/etc/slurm/epilog.d/miniwdl-podman.sh
# a feature, for runtime.slurm_constraint
NodeName=$host CPUs=$cpus RealMemory=$mem_mb Features=mwp-test State=UNKNOWN
# preemption: a job in "urgent" cancels jobs of "main" it needs room from (PREEMPTED)
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1024 PriorityTier=1
PartitionName=urgent Nodes=$host MaxTime=INFINITE State=UP DefMemPerCPU=1024 PriorityTier=10
# a job asking for more time than this partition allows pends for ever (PartitionTimeLimit)
PartitionName=short Nodes=$host MaxTime=1 State=UP DefMemPerCPU=1024 PriorityTier=1
CONF
cat > /etc/slurm/cgroup.conf <<CONF
# written by miniwdl_podman contrib/testbed/slurm.sh: jobs are confined and tracked by cgroup v1,
# so Slurm kills a job over its memory (OUT_OF_MEMORY) and every process of a cancelled job,
# Podman's conmon and containers included (they stay in the job's cgroup: cgroupfs manager)
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedSwapSpace=0
ConstrainCores=no
ConstrainDevices=no
CONF
# slurmdbd answers (sacctmgr reads slurm.conf's AccountingStorageType), and knows the cluster
for _ in $(seq 300); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
sacctmgr -n list cluster >/dev/null 2>&1 \
    || tb_die "slurmdbd did not come up (see /var/log/slurm/slurmdbd.log)"
sacctmgr -n -P list cluster format=cluster | grep -qx miniwdl-podman-test \
    || sacctmgr -i add cluster miniwdl-podman-test >/dev/null
conf_sum=$(cat /etc/slurm/slurm.conf /etc/slurm/cgroup.conf | md5sum | cut -c1-32)
if [ "$(cat /run/miniwdl-podman-slurm.sum 2>/dev/null)" != "$conf_sum" ]; then
    # configuration changed (or first start): restart both daemons on it
    pkill -x slurmctld || true
    pkill -x slurmd || true
    for _ in $(seq 50); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 0.1; done
fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
echo "$conf_sum" > /run/miniwdl-podman-slurm.sum
for _ in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -qx idle && break
    sleep 0.5
done
state=$(sinfo -h -o %T 2>/dev/null || true)
[ "$state" = idle ] || tb_die "Slurm did not come up idle (state: '$state'); see /var/log/slurm/"
tb_log "Slurm ready: node $host, $cpus CPUs, ${mem_mb} MB"
