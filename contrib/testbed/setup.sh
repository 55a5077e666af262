#!/usr/bin/env bash
# Prepare this machine (Debian 12, as root) for rootless Podman runs and tests. Idempotent:
# a second run on the same machine reuses the user, its venv, its images and the registry.
#   --minimal   only what `contrib/demo.sh` needs (no loopback registry)
# It installs Podman and friends from apt, makes runc the runtime (crun fails on cgroup v1
# hybrid hosts), lets rootless networking open /dev/net/tun, creates the unprivileged test user
# with subuids, gives it the overlay storage driver, a venv with this package, the test images,
# and (unless --minimal) a loopback registry for pull tests. Fails loudly if a rootless
# container cannot run at the end.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
minimal=0
[ "${1:-}" = "--minimal" ] && minimal=1

[ "$(id -u)" = 0 ] || tb_die "run as root: it installs packages and creates the test user $TB_USER"

# 1. packages (a lane's tree has its own list, installed by tree.sh)
if [ -n "${TB_LANE:-}" ]; then
    tb_lane_facts "$TB_LANE"
    pkgs=("${TB_LANE_PKGS[@]}")
else
    pkgs=(podman runc uidmap slirp4netns fuse-overlayfs catatonit busybox-static python3-venv)
    # crun too (runc is the runtime used): doctor's tests configure it to prove the crun diagnosis
    pkgs+=(crun)
    # the loopback registries; Chromium for the report page's browser test
    [ $minimal = 1 ] || pkgs+=(docker-registry chromium)
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    tb_log "installing ${missing[*]}"
    tb_apt_install "${missing[@]}"
fi

# 2. host fixes from the field notes: rootless default networking needs /dev/net/tun
if [ -c /dev/net/tun ]; then chmod 666 /dev/net/tun; fi

# 2b. a fake CDI device kind, so the GPU path (runtime.gpu -> CDI device) runs end to end on a
#     machine with no GPU: it only sets environment variables in the container
install -d /etc/cdi
cat > /etc/cdi/miniwdl-podman-test.yaml <<CONF
cdiVersion: "0.5.0"
kind: "miniwdl-podman.test/fake"
devices:
  - name: "gpu0"
    containerEdits:
      env:
        - "FAKE_GPU=gpu0"
CONF

# 3. the unprivileged user, with a subordinate uid/gid range
# (in a lane's tree, fixed uids that no host user has: lane.sh stops their processes by uid)
id "$TB_USER" >/dev/null 2>&1 || { tb_log "creating user $TB_USER"
    useradd -m -s /bin/bash ${TB_LANE_UID:+-u "$TB_LANE_UID"} "$TB_USER"; }
grep -q "^$TB_USER:" /etc/subuid || usermod --add-subuids 300000-365535 "$TB_USER"
grep -q "^$TB_USER:" /etc/subgid || usermod --add-subgids 300000-365535 "$TB_USER"
tb_user_facts
install -d -m 700 -o "$TB_USER" -g "$TB_USER" "$TB_RUNTIME"

# 4. the user's container configuration: cgroupfs (no systemd user session), overlay; runc on
#    the host (crun fails on its cgroup v1 hybrid layout), Podman's default (crun) in a lane
cfg=$TB_HOME/.config/containers
install -d -o "$TB_USER" -g "$TB_USER" "$TB_HOME/.config" "$cfg" "$cfg/registries.conf.d"
runtime_line='runtime = "runc"'
[ -z "${TB_LANE:-}" ] || runtime_line='# runtime: Podman'"'"'s default (crun)'
cat > "$cfg/containers.conf" <<CONF
# written by miniwdl_podman contrib/testbed/setup.sh
[engine]
$runtime_line
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
cat > "$cfg/storage.conf" <<CONF
# written by miniwdl_podman contrib/testbed/setup.sh: overlay, not the slow vfs default
[storage]
driver = "overlay"
CONF
cat > "$cfg/registries.conf.d/50-miniwdl-podman-test.conf" <<CONF
# the test bed's loopback registry speaks plain HTTP
[[registry]]
location = "$TB_REGISTRY"
insecure = true

# a port where the fault tests put a registry that is down, then up (a relay to the one above)
[[registry]]
location = "127.0.0.1:5001"
insecure = true

# the private registry (wants credentials)
[[registry]]
location = "$TB_PRIVATE_REGISTRY"
insecure = true
CONF
chown "$TB_USER:$TB_USER" "$cfg"/*.conf "$cfg"/registries.conf.d/*.conf
driver=$(tb_as_user podman info --format '{{.Store.GraphDriverName}}' 2>/dev/null || true)
if [ "$driver" != "overlay" ]; then
    tb_log "storage driver is '$driver'; resetting $TB_USER's store to overlay"
    tb_as_user podman system reset -f >/dev/null 2>&1 || true
    driver=$(tb_as_user podman info --format '{{.Store.GraphDriverName}}' 2>/dev/null || true)
    [ "$driver" = "overlay" ] || tb_log "WARNING: storage driver still '$driver' (slow, but works)"
fi

# 5. a copy of this source tree the user can read, and a venv (Debian's python3) with it
rm -rf "$TB_SRC"
install -d -o "$TB_USER" -g "$TB_USER" "$TB_SRC"
tar -C "$repo" --exclude=./.git --exclude=./.nox --exclude='*.egg-info' --exclude=__pycache__ \
    --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache -c . \
    | tb_as_user tar -C "$TB_SRC" -x
[ -x "$TB_VENV/bin/python" ] || tb_as_user /usr/bin/python3 -m venv "$TB_VENV"
tb_as_user "$TB_VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$TB_SRC[test]"

# 6. test images, built locally in the user's store (cached there between runs)
tb_as_user bash "$TB_SRC/contrib/testbed/make-images.sh"

# 7. the loopback registry for pull tests (plain HTTP on 127.0.0.1 only; one for the host and
#    every lane: lane.sh starts it on the host), and the images the pull tests pull
if [ $minimal = 0 ]; then
    [ -n "${TB_LANE:-}" ] || bash "$here/registry.sh"
    tb_as_user python3 -c "import urllib.request; urllib.request.urlopen('http://$TB_REGISTRY/v2/', timeout=2)" \
        || tb_die "the loopback registry does not answer on $TB_REGISTRY (contrib/testbed/registry.sh starts it)"
    tb_as_user podman push -q --tls-verify=false "$TB_BASE_IMAGE" \
        "docker://$TB_REGISTRY/miniwdl-podman-test/pullme:2" >/dev/null
    # for the Slurm tests, whose compute node store (node-local, empty at first) pulls
    tb_as_user podman push -q --tls-verify=false localhost/miniwdl-podman/user-app:2 \
        "docker://$TB_REGISTRY/miniwdl-podman-test/user-app:2" >/dev/null
    # the private registry's image (credentials given here only: the user's auth file is not
    # touched, so the tests decide which credentials a run has)
    tb_as_user podman push -q --tls-verify=false --creds "$TB_PRIVATE_CREDS" "$TB_BASE_IMAGE" \
        "docker://$TB_PRIVATE_REGISTRY/miniwdl-podman-test/private:2" >/dev/null
fi

# 8. a second user with NO subordinate uid/gid range (like many LDAP users on HPC), for the
#    single-uid tests; same container configuration, base image only
if [ $minimal = 0 ]; then
    nosub=$TB_NOSUB_USER
    id "$nosub" >/dev/null 2>&1 || { tb_log "creating user $nosub (no subuids)"
        useradd -m -s /bin/bash ${TB_LANE_UID:+-u "$((TB_LANE_UID + 1))"} "$nosub"; }
    sed -i "/^$nosub:/d" /etc/subuid /etc/subgid
    nosub_uid=$(id -u "$nosub")
    nosub_home=$(getent passwd "$nosub" | cut -d: -f6)
    install -d -m 700 -o "$nosub" -g "$nosub" "/run/user/$nosub_uid"
    install -d -o "$nosub" -g "$nosub" "$nosub_home/.config" "$nosub_home/.config/containers"
    cp "$cfg/containers.conf" "$cfg/storage.conf" "$nosub_home/.config/containers/"
    chown "$nosub:$nosub" "$nosub_home/.config/containers/"*.conf
    chmod 755 "$TB_HOME"  # the no-subuid user runs the tests from the test user's venv and tree
    (
        TB_USER=$nosub
        tb_user_facts
        tb_as_user bash -c 'podman system migrate >/dev/null 2>&1 || true; bash "$0" --base-only' \
            "$TB_SRC/contrib/testbed/make-images.sh"
    )
fi

# 9. small file systems for fault tests: full (8 MiB), read-only, tiny (3 MiB, for a graphroot)
if [ $minimal = 0 ]; then
    gid=$(id -g "$TB_USER")
    for spec in "mwp-full:size=8m" "mwp-ro:size=1m,ro" "mwp-tiny:size=3m"; do
        dir=/mnt/${spec%%:*}
        mkdir -p "$dir"
        mountpoint -q "$dir" && umount "$dir"
        mount -t tmpfs -o "${spec#*:},uid=$TB_UID,gid=$gid,mode=700" tmpfs "$dir"
    done
    # rootless Podman's pause process keeps the mount namespace it started with ("/" is not a
    # shared mount here): restart it so that it sees the new mounts
    tb_as_user podman system migrate >/dev/null 2>&1 || true
fi

# 9b. an ancestor cgroup with limits for the capacity test: mwp-capacity-UID (1 CPU, 3 GiB) in the
# cgroup v1 cpu and memory hierarchies, with a child "run" the test user may move itself into
# (its own limits stay unset: only the ancestor's cap applies, as on a login node's user slice)
if [ $minimal = 0 ]; then
    for c in cpu memory; do
        mp=$(tb_cgroup_v1_mount "$c") \
            || tb_die "no cgroup v1 $c hierarchy here: the capacity test needs one (see lib.sh tb_enter)"
        dir=$mp/mwp-capacity-$TB_UID
        mkdir -p "$dir/run"
        case $c in
            cpu) echo 100000 > "$dir/cpu.cfs_period_us"; echo 100000 > "$dir/cpu.cfs_quota_us" ;;
            memory) echo $((3 << 30)) > "$dir/memory.limit_in_bytes" ;;
        esac
        chown "$TB_USER" "$dir/run/cgroup.procs"
    done
fi

# 10. the proof: a rootless container runs as the user, with keep-id
out=$(tb_as_user podman run --rm --network none --userns keep-id "$TB_BASE_IMAGE" id -u 2>&1) \
    || tb_die "rootless Podman cannot run a container as $TB_USER: $out"
[ "$(printf '%s' "$out" | tail -n1)" = "$TB_UID" ] \
    || tb_die "keep-id container ran as uid '$out', expected $TB_UID"
tb_log "ready: user $TB_USER (uid $TB_UID), storage $driver, venv $TB_VENV"
