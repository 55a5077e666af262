#!/usr/bin/env bash
# As root, on the host: make sure the test bed's loopback registry (Debian's docker-registry,
# plain HTTP on 127.0.0.1 only) answers. One serves the host's tests and every lane's: lanes share
# the host's network. Idempotent.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || tb_die "run as root"
answers() {
    python3 -c "import urllib.request; urllib.request.urlopen('http://$TB_REGISTRY/v2/', timeout=2)" 2>/dev/null
}
answers && exit 0
if ! command -v docker-registry >/dev/null; then
    tb_log "installing docker-registry"
    tb_apt_install docker-registry
fi
regdir=/var/lib/miniwdl-podman-registry
install -d "$regdir"
cat > "$regdir/config.yml" <<CONF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $regdir/data
  delete:
    enabled: true
http:
  addr: $TB_REGISTRY
CONF
tb_log "starting loopback registry on $TB_REGISTRY"
setsid docker-registry serve "$regdir/config.yml" >"$regdir/registry.log" 2>&1 </dev/null &
for _ in $(seq 50); do
    answers && exit 0
    sleep 0.2
done
tb_die "loopback registry did not come up on $TB_REGISTRY (see $regdir/registry.log)"
