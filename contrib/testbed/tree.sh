#!/usr/bin/env bash
# As root: build, or reuse, the root file system of a newer-Podman lane and print its path.
#   tree.sh podman5|podman6
# podman5 is Debian 13 (trixie) with its Podman 5.x; podman6 is Debian unstable with Podman 6.x
# from experimental. Each tree is a `debootstrap --variant=minbase` system with Podman, crun,
# passt (pasta), fuse-overlayfs, catatonit, uidmap, busybox-static and python3-venv, cached
# under $MINIWDL_PODMAN_LANES (default /var/cache/miniwdl-podman/lanes) and rebuilt only when
# this recipe changes. Building one takes about a minute; lane.sh enters it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || tb_die "run as root: it runs debootstrap"
lane=${1:?usage: tree.sh podman5|podman6}
tb_lane_facts "$lane"
install -d "$TB_LANES_DIR"

# one build of a tree at a time (.ci/run starts them beside the host's tests)
exec 9>"$TB_TREE.lock"
flock 9
# the recipe: a tree built from another one is rebuilt
recipe="v1 $TB_LANE_SUITE ${TB_LANE_FROM:-default} ${TB_LANE_PKGS[*]}"
if [ -f "$TB_TREE/.miniwdl-podman-tree" ] && [ "$(cat "$TB_TREE/.miniwdl-podman-tree")" = "$recipe" ]; then
    printf '%s\n' "$TB_TREE"
    exit 0
fi

command -v debootstrap >/dev/null || {
    tb_log "installing debootstrap"
    tb_apt_install debootstrap
}
new=$TB_TREE.new
rm -rf "$new"
tb_log "building the $lane tree ($TB_LANE_SUITE) in $TB_TREE"
debootstrap --variant=minbase "$TB_LANE_SUITE" "$new" "$TB_MIRROR" >"$new.log" 2>&1 \
    || tb_die "debootstrap $TB_LANE_SUITE failed: $(tail -n 3 "$new.log")"
if [ -n "${TB_LANE_FROM:-}" ]; then
    printf 'deb %s %s main\n' "$TB_MIRROR" "$TB_LANE_FROM" >"$new/etc/apt/sources.list.d/$TB_LANE_FROM.list"
fi
# sid's and experimental's Release files on the mirror can be older than apt's limit
printf 'Acquire::Check-Valid-Until "false";\n' >"$new/etc/apt/apt.conf.d/99miniwdl-podman"
cp -L /etc/resolv.conf "$new/etc/resolv.conf"
# apt in the new tree, in a mount namespace of its own (nothing is left mounted on the host)
unshare -m --propagation private bash -euo pipefail -c '
    t=$1; shift
    mount -t proc proc "$t/proc"
    mount --rbind /dev "$t/dev"
    mount --rbind /sys "$t/sys"
    export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
    chroot "$t" apt-get update -q
    chroot "$t" apt-get install -y -q --no-install-recommends ca-certificates
    from=${1:-}; shift
    chroot "$t" apt-get install -y -q --no-install-recommends ${from:+-t "$from"} "$@"
    chroot "$t" apt-get clean
' _ "$new" "${TB_LANE_FROM:-}" "${TB_LANE_PKGS[@]}" >>"$new.log" 2>&1 \
    || tb_die "installing Podman in the $lane tree failed: $(tail -n 5 "$new.log")"
printf '%s\n' "$recipe" >"$new/.miniwdl-podman-tree"
rm -rf "$TB_TREE"
mv "$new" "$TB_TREE"
mv "$new.log" "$TB_TREE.log"
tb_log "$lane tree ready: podman $(chroot "$TB_TREE" dpkg-query -W -f='${Version}' podman)"
printf '%s\n' "$TB_TREE"
