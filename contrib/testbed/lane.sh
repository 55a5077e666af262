#!/usr/bin/env bash
# As root: run the whole test suite on a newer Podman, as an unprivileged user, exactly as
# run-tests.sh does on the host, but inside the lane's tree (tree.sh) with a pure cgroup v2 view:
#   lane.sh podman5 [PYTEST ARGS...]   Debian 13's Podman 5.x: crun, pasta, cgroup v2
#   lane.sh podman6 [PYTEST ARGS...]   Podman 6.x from Debian experimental: the same
# The same setup.sh and suite.sh run inside; the loopback registry is the host's (registry.sh).
# The Slurm cluster stays on the host; the node helper is proven here by the live tests that
# run `node-run` directly. Fails, never skips, when rootless Podman cannot run in the tree.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || tb_die "run as root: it builds and enters the lane's tree"
lane=${1:?usage: lane.sh podman5|podman6 [PYTEST ARGS...]}
shift
tb_lane_facts "$lane"
tree=$(bash "$here/tree.sh" "$lane")
bash "$here/registry.sh"
# rootless networking (pasta) opens /dev/net/tun, the host's device
if [ -c /dev/net/tun ]; then chmod 666 /dev/net/tun; fi
status=0
tb_enter "$tree" v2 env TB_LANE="$lane" bash -euo pipefail -c '
    bash /mnt/mwp-src/contrib/testbed/setup.sh
    exec bash /mnt/mwp-src/contrib/testbed/suite.sh --no-slurm "$@"
' _ "$@" || status=$?
# the lane's users' processes (rootless pause processes, services) hold the tree's mount
# namespace: stop them (their uids are the lane's own)
for uid in "$TB_LANE_UID" "$((TB_LANE_UID + 1))"; do
    pkill -KILL -u "$uid" 2>/dev/null || true
done
exit $status
