#!/usr/bin/env bash
# As root, on the host: make sure the test bed's loopback registries (Debian's docker-registry,
# plain HTTP on 127.0.0.1 only) answer: an open one, and a private one that wants credentials.
# They serve the host's tests and every lane's: lanes share the host's network. Idempotent.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || tb_die "run as root"
# answers ADDR: the registry at ADDR answers (401 included: the private one wants credentials)
answers() {
    python3 - "$1" <<'PY' 2>/dev/null
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(f"http://{sys.argv[1]}/v2/", timeout=2)
except urllib.error.HTTPError as exn:
    sys.exit(0 if exn.code == 401 else 1)
PY
}
answers "$TB_REGISTRY" && answers "$TB_PRIVATE_REGISTRY" && exit 0
missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
if [ ${#missing[@]} -gt 0 ]; then
    tb_log "installing ${missing[*]}"
    tb_apt_install "${missing[@]}"
fi
# serve NAME ADDR [AUTH-YAML]: one registry, its data in /var/lib/miniwdl-podman-NAME
serve() {
    local regdir=/var/lib/miniwdl-podman-$1 addr=$2 auth=${3:-}
    answers "$addr" && return 0
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
  addr: $addr
$auth
CONF
    tb_log "starting loopback registry $1 on $addr"
    setsid docker-registry serve "$regdir/config.yml" >"$regdir/registry.log" 2>&1 </dev/null &
    for _ in $(seq 50); do
        answers "$addr" && return 0
        sleep 0.2
    done
    tb_die "loopback registry $1 did not come up on $addr (see $regdir/registry.log)"
}
serve registry "$TB_REGISTRY"
# plain HTTP with basic auth: clients send the credentials because the test bed marks it
# insecure (loopback only)
install -d /var/lib/miniwdl-podman-private-registry
htpasswd -Bbn "${TB_PRIVATE_CREDS%%:*}" "${TB_PRIVATE_CREDS#*:}" \
    > /var/lib/miniwdl-podman-private-registry/htpasswd
serve private-registry "$TB_PRIVATE_REGISTRY" "auth:
  htpasswd:
    realm: miniwdl-podman-test
    path: /var/lib/miniwdl-podman-private-registry/htpasswd"
