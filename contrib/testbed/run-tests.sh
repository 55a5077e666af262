#!/usr/bin/env bash
# As root: prepare the test bed on this host (Podman from its own packages), start the one-host
# Slurm cluster, then run the whole test suite as the unprivileged test user against real
# rootless Podman (suite.sh). Extra arguments go to pytest.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || tb_die "run as root (or run 'nox -s tests' as a user whose rootless Podman works)"

bash "$here/setup.sh"
bash "$here/slurm.sh"   # the one-host Slurm cluster of the podman_rootless_slurm tests
exec bash "$here/suite.sh" "$@"
