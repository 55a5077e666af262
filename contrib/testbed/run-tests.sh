#!/usr/bin/env bash
# As root: prepare the test bed, then run the whole test suite as the unprivileged test user
# against real rootless Podman. Any skip counts as a failure, and so does a container left behind.
# Extra arguments go to pytest.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || tb_die "run as root (or run 'nox -s tests' as a user whose rootless Podman works)"

bash "$here/setup.sh"
bash "$here/slurm.sh"   # the one-host Slurm cluster of the podman_rootless_slurm tests
tb_user_facts
status=0
tb_as_user bash -c 'cd "$0" && exec python -m pytest -p no:cacheprovider --fail-on-skip tests "$@"' \
    "$TB_SRC" "$@" || status=$?
# single-uid mode, for real: the same live tests' harness as a user with no subuid range
(
    TB_USER=$TB_NOSUB_USER
    tb_user_facts
    tb_as_user bash -c 'cd "$0" && exec python -m pytest -p no:cacheprovider --fail-on-skip \
        -m single_uid tests/live "$@"' "$TB_SRC" "$@"
) || status=$?
# rootless networking broken for real (/dev/net/tun unusable), for doctor's diagnosis and fix
if [ -c /dev/net/tun ]; then
    trap 'chmod 666 /dev/net/tun' EXIT
    chmod 600 /dev/net/tun
    tb_as_user bash -c 'cd "$0" && exec python -m pytest -p no:cacheprovider --fail-on-skip \
        -m tun_denied tests/live "$@"' "$TB_SRC" "$@" || status=$?
    chmod 666 /dev/net/tun
    trap - EXIT
else
    tb_log "FAIL: no /dev/net/tun on this machine: the tun_denied tests cannot run"
    status=1
fi
# the Slurm tests' node-local store, and their jobs
left=$(tb_as_user podman --root "/tmp/miniwdl-podman-$TB_USER/root" \
    --runroot "/tmp/miniwdl-podman-$TB_USER/run" ps -a --format '{{.Names}}' 2>/dev/null || true)
jobs=$(squeue -h -u "$TB_USER" -o '%i %j %T' 2>/dev/null || true)
if [ -n "$left$jobs" ]; then
    tb_log "FAIL: left behind by the Slurm tests: containers: $left; jobs: $jobs"
    [ $status != 0 ] || status=1
fi
for user in "$TB_USER" "$TB_NOSUB_USER"; do
    left=$(TB_USER=$user; tb_user_facts; tb_as_user podman ps -a --format '{{.Names}}')
    if [ -n "$left" ]; then
        tb_log "FAIL: containers left behind by the tests of $user: $left"
        [ $status != 0 ] || status=1
    fi
done
exit $status
