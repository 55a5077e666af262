#!/usr/bin/env bash
# As root, where setup.sh has prepared the test bed (the host, or inside a lane's tree): run the
# whole test suite as the unprivileged test user, then the single-uid tests as the user without
# subuids and the tun_denied tests with /dev/net/tun made unusable. Any skip counts as a failure,
# and so does a container left behind. Extra arguments go to pytest.
#   --no-slurm   leave out the tests of the Slurm cluster (a lane: the cluster runs on the host)
#                and the browser test of the report page (Chromium is installed on the host)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || tb_die "run as root"
markers="not single_uid and not tun_denied"
slurm=1
if [ "${1:-}" = "--no-slurm" ]; then
    shift
    slurm=0
    markers="$markers and not slurm and not browser"
fi
tb_user_facts
pytest=(python -m pytest -p no:cacheprovider --fail-on-skip)
status=0
tb_as_user bash -c 'cd "$0" && exec "$@"' "$TB_SRC" "${pytest[@]}" -m "$markers" tests "$@" \
    || status=$?
# single-uid mode, for real: the same live tests' harness as a user with no subuid range
(
    TB_USER=$TB_NOSUB_USER
    tb_user_facts
    tb_as_user bash -c 'cd "$0" && exec "$@"' "$TB_SRC" "${pytest[@]}" -m single_uid tests/live "$@"
) || status=$?
# rootless networking broken for real (/dev/net/tun unusable), for doctor's diagnosis and fix
if [ -c /dev/net/tun ]; then
    mode=$(stat -c %a /dev/net/tun)
    trap 'chmod "$mode" /dev/net/tun' EXIT
    chmod 600 /dev/net/tun
    tb_as_user bash -c 'cd "$0" && exec "$@"' "$TB_SRC" "${pytest[@]}" -m tun_denied tests/live "$@" \
        || status=$?
    chmod "$mode" /dev/net/tun
    trap - EXIT
else
    tb_log "FAIL: no /dev/net/tun on this machine: the tun_denied tests cannot run"
    status=1
fi
if [ $slurm = 1 ]; then
    # the Slurm tests' node-local store, and their jobs
    left=$(tb_as_user podman --root "/tmp/miniwdl-podman-$TB_USER/root" \
        --runroot "/tmp/miniwdl-podman-$TB_USER/run" ps -a --format '{{.Names}}' 2>/dev/null || true)
    jobs=$(squeue -h -u "$TB_USER" -o '%i %j %T' 2>/dev/null || true)
    if [ -n "$left$jobs" ]; then
        tb_log "FAIL: left behind by the Slurm tests: containers: $left; jobs: $jobs"
        [ $status != 0 ] || status=1
    fi
fi
for user in "$TB_USER" "$TB_NOSUB_USER"; do
    left=$(TB_USER=$user; tb_user_facts; tb_as_user podman ps -a --format '{{.Names}}')
    if [ -n "$left" ]; then
        tb_log "FAIL: containers left behind by the tests of $user: $left"
        [ $status != 0 ] || status=1
    fi
    # per-run private services' directories and their run roots (a warm service's stays)
    left=$(TB_USER=$user; tb_user_facts; find "$TB_RUNTIME" -mindepth 1 -maxdepth 1 \
        \( -regex '.*/miniwdl-podman-[a-z0-9_]\{8\}' -o -name 'mwp-run-*' \) -printf '%f ' \
        2>/dev/null || true)
    if [ -n "$left" ]; then
        tb_log "FAIL: private service directories left behind by the tests of $user: $left"
        [ $status != 0 ] || status=1
    fi
done
exit $status
