# Shared helpers for the test bed scripts (sourced, not run). Bash.
# The test user is MINIWDL_PODMAN_TEST_USER (default mwpodtest).

TB_USER=${MINIWDL_PODMAN_TEST_USER:-mwpodtest}
TB_NOSUB_USER=${MINIWDL_PODMAN_TEST_NOSUB_USER:-mwpodnosub}
export MINIWDL_PODMAN_TEST_USER_PRIMARY=$TB_USER
TB_REGISTRY=${MINIWDL_PODMAN_TEST_REGISTRY:-127.0.0.1:5000}
# a second loopback registry that wants credentials (htpasswd), for the private-registry tests;
# the test credentials are tests/live/conftest.py's too
TB_PRIVATE_REGISTRY=127.0.0.1:5002
TB_PRIVATE_CREDS=mwp-test:mwp-test-secret
TB_BASE_IMAGE=localhost/miniwdl-podman/busybox-bash:2
TB_NOBODY_IMAGE=localhost/miniwdl-podman/busybox-bash-nobody:2

tb_log() { printf '[testbed] %s\n' "$*" >&2; }
tb_die() { printf '[testbed] FAIL: %s\n' "$*" >&2; exit 1; }

# tb_apt_install PKG...: apt-get update and install on the host, one at a time among the test
# bed's scripts (tree builds may run beside the host's set-up)
tb_apt_install() {
    (
        flock 9
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 "$@" >/dev/null
    ) 9>/var/lock/miniwdl-podman-apt
}

tb_user_facts() {
    TB_UID=$(id -u "$TB_USER")
    TB_HOME=$(getent passwd "$TB_USER" | cut -d: -f6)
    TB_RUNTIME=/run/user/$TB_UID
    # the venv and source tree always belong to the primary test user
    local primary_home
    primary_home=$(getent passwd "$MINIWDL_PODMAN_TEST_USER_PRIMARY" | cut -d: -f6)
    TB_VENV=$primary_home/venv
    TB_SRC=$primary_home/miniwdl_podman
}

# run a command as the test user with a clean login-like environment
tb_as_user() {
    runuser -u "$TB_USER" -- env -i \
        HOME="$TB_HOME" USER="$TB_USER" LOGNAME="$TB_USER" SHELL=/bin/bash \
        PATH="$TB_VENV/bin:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 \
        XDG_RUNTIME_DIR="$TB_RUNTIME" \
        ${CI:+CI="$CI"} \
        "$@"
}

# -- lanes: the same test bed on a newer Podman, in a debootstrap tree ----------------------------
TB_MIRROR=${MINIWDL_PODMAN_MIRROR:-http://deb.debian.org/debian}
TB_LANES_DIR=${MINIWDL_PODMAN_LANES:-/var/cache/miniwdl-podman/lanes}

# tb_lane_facts LANE: what the lane's tree is made of (TB_LANE_SUITE, TB_LANE_FROM, the
# packages), where it lives (TB_TREE), and its test users' fixed uids (distinct from any host
# user's, so that the lane's processes can be told apart and stopped)
tb_lane_facts() {
    TB_LANE=$1
    TB_TREE=$TB_LANES_DIR/$1
    TB_LANE_PKGS=(podman crun uidmap passt fuse-overlayfs catatonit busybox-static python3-venv
        procps iproute2)
    case $1 in
        # Podman 5 still offers slirp4netns (pasta is its default): both are tested there
        podman5) TB_LANE_SUITE=trixie; TB_LANE_FROM=""; TB_LANE_UID=2501; TB_LANE_PKGS+=(slirp4netns) ;;
        podman6) TB_LANE_SUITE=sid; TB_LANE_FROM=experimental; TB_LANE_UID=2601 ;;
        *) tb_die "unknown lane '$1' (podman5 or podman6)" ;;
    esac
}

# tb_cgroup_v1_mount CONTROLLER: where this mount namespace has the cgroup v1 hierarchy of
# CONTROLLER mounted (nothing, and status 1, when it has none)
tb_cgroup_v1_mount() {
    awk -v c="$1" '{
        for (i = 7; i <= NF && $i != "-"; i++) ;
        if ($(i + 1) != "cgroup") next
        n = split($(i + 3), opts, ",")
        for (j = 1; j <= n; j++) if (opts[j] == c) { print $5; found = 1; exit }
    } END { exit !found }' /proc/self/mountinfo
}

# tb_enter TREE VIEW COMMAND...: run COMMAND as root inside TREE, entered with pivot_root in a
# private mount namespace (rootless Podman refuses a chroot: the kernel denies unprivileged user
# namespaces to a chrooted process). VIEW "v2" gives the tree a pure cgroup v2 hierarchy (the
# host's unified one, bound: never mounted afresh, since cgroup2 mount options apply to the
# whole hierarchy, the host's too); "host" keeps the host's layout. A v2 view of a host whose
# cpu and memory controllers are on v1 (this machine's kind: its v2 hierarchy has neither) also
# gets those two v1 hierarchies at /mnt/mwp-cgroup-v1/{cpu,memory}, so that the capacity test
# can set real limits on an ancestor cgroup (Podman still sees a pure v2 /sys/fs/cgroup). The repository is bound
# read-only at /mnt/mwp-src; /tmp and /run are fresh tmpfs; the host's resolver, CA bundle and
# pip configuration are copied in so that apt and pip reach what the host reaches.
tb_enter() {
    local tree=$1 view=$2 repo
    shift 2
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    cp -L /etc/resolv.conf "$tree/etc/resolv.conf"
    cp -L /etc/ssl/certs/ca-certificates.crt "$tree/etc/ssl/certs/ca-certificates.crt"
    [ ! -f /etc/pip.conf ] || cp /etc/pip.conf "$tree/etc/pip.conf"
    if [ -d /etc/xdg/pip ]; then rm -rf "$tree/etc/xdg/pip"; mkdir -p "$tree/etc/xdg"; cp -r /etc/xdg/pip "$tree/etc/xdg/pip"; fi
    export -f tb_cgroup_v1_mount
    unshare -m --propagation private -- bash -euo pipefail -c '
        t=$1 view=$2 repo=$3; shift 3
        mount --rbind "$t" "$t"
        mount --rbind /proc "$t/proc"
        mount --rbind /dev "$t/dev"
        mount --rbind /sys "$t/sys"
        if [ "$view" = v2 ] && [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
            [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ] \
                || { echo "[testbed] FAIL: no cgroup2 hierarchy on this host for a v2 view" >&2; exit 1; }
            v1=""
            for c in cpu memory; do
                v1="$v1 $c=$(tb_cgroup_v1_mount "$c" || true)"
            done
            umount -R "$t/sys/fs/cgroup"
            mount --bind /sys/fs/cgroup/unified "$t/sys/fs/cgroup"
            for pair in $v1; do
                [ -n "${pair#*=}" ] || continue
                mkdir -p "$t/mnt/mwp-cgroup-v1/${pair%%=*}"
                mount --bind "${pair#*=}" "$t/mnt/mwp-cgroup-v1/${pair%%=*}"
            done
        fi
        mount -t tmpfs -o mode=1777 tmpfs "$t/tmp"
        mount -t tmpfs -o mode=755 tmpfs "$t/run"
        mkdir -p "$t/mnt/mwp-src"
        mount --bind "$repo" "$t/mnt/mwp-src"
        mount -o remount,bind,ro "$t/mnt/mwp-src"
        cd "$t"
        mkdir -p .oldroot
        pivot_root . .oldroot
        cd /
        umount -l /.oldroot
        mount --make-rshared /
        exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LANG=C.UTF-8 ${CI:+CI="$CI"} "$@"
    ' _ "$tree" "$view" "$repo" "$@"
}
