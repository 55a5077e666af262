#!/usr/bin/env bash
# Build the local test/demo images in the invoking user's Podman store, with no registry:
# a busybox-static rootfs plus the host's bash and the libraries it links, `podman import`ed.
# Cached: an image that already exists is not rebuilt. Run as the user who will use them.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" != 0 ] || tb_die "run as the unprivileged user whose store should hold the images"

build_base() {
    local root
    root=$(mktemp -d)
    trap 'rm -rf "$root"' RETURN
    chmod 755 "$root"
    mkdir -p "$root"/{bin,etc,tmp,root,home,usr/bin,var/tmp}
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    cp /bin/bash "$root/bin/bash"
    for lib in $(ldd /bin/bash | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' > "$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
    chmod 1777 "$root/tmp" "$root/var/tmp"
    tar --numeric-owner --owner=0 --group=0 -C "$root" -c . | podman import -q \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change 'CMD ["/bin/sh"]' \
        - "$TB_BASE_IMAGE" >/dev/null
    # the same files (all root's) running as nobody: importable even without subuids
    tar --numeric-owner --owner=0 --group=0 -C "$root" -c . | podman import -q \
        --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change 'USER nobody' \
        - "$TB_NOBODY_IMAGE" >/dev/null
}

# build_user NAME USER [RUN...]: the base image running as a non-root USER
build_user() {
    local name=$1 user=$2 run=${3:-true}
    podman image exists "localhost/miniwdl-podman/$name:2" && return 0
    tb_log "building localhost/miniwdl-podman/$name:2"
    printf 'FROM %s\nRUN %s\nUSER %s\n' "$TB_BASE_IMAGE" "$run" "$user" \
        | podman build -q -t "localhost/miniwdl-podman/$name:2" -f - . >/dev/null
}

if ! podman image exists "$TB_BASE_IMAGE" || ! podman image exists "$TB_NOBODY_IMAGE"; then
    tb_log "building $TB_BASE_IMAGE and $TB_NOBODY_IMAGE"
    build_base
fi
# the same image under a registry name nothing answers for: runs only if no pull is attempted
podman tag "$TB_BASE_IMAGE" 127.0.0.1:5999/miniwdl-podman-test/offline:2
if [ "${1:-}" != "--base-only" ]; then
    # images whose USER is not root: named with a home, numeric with no passwd entry, nobody
    cd "$(mktemp -d)"
    build_user user-app app "echo 'app:x:1500:1600::/home/app:/bin/sh' >> /etc/passwd \
        && echo 'apps:x:1600:' >> /etc/group && mkdir -p /home/app \
        && echo 'export FROM_IMAGE=1' > /home/app/.profile && chown -R 1500:1600 /home/app"
    build_user user-1000 1000
    build_user user-nobody nobody
    cd - >/dev/null
fi
