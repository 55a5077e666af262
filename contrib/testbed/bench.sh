#!/usr/bin/env bash
# As root: prepare the test bed, run contrib/bench/bench.py as the unprivileged test user, and
# copy the resulting docs/benchmarks.md back into this tree. Arguments go to bench.py.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || tb_die "run as root (or run contrib/bench/bench.py as a user whose rootless Podman works)"
bash "$here/setup.sh"
tb_user_facts
tb_as_user bash -c 'cd "$0" && exec python contrib/bench/bench.py --out docs/benchmarks.md "$@"' \
    "$TB_SRC" "$@"
cp "$TB_SRC/docs/benchmarks.md" "$repo/docs/benchmarks.md"
tb_log "wrote $repo/docs/benchmarks.md"
