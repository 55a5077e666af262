#!/usr/bin/env bash
# As root: run contrib/bench/bench.py as the unprivileged test user on every Podman lane (the
# host's Podman, then podman5 and podman6 in their trees: lane.sh), and write docs/benchmarks.md
# with one column per lane. Arguments go to bench.py; MINIWDL_PODMAN_BENCH_LANES (default
# "host podman5 podman6") picks the lanes.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" = 0 ] || tb_die "run as root (or run contrib/bench/bench.py as a user whose rootless Podman works)"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
results=()
for lane in ${MINIWDL_PODMAN_BENCH_LANES:-host podman5 podman6}; do
    tb_log "benchmark on lane $lane"
    if [ "$lane" = host ]; then
        bash "$here/setup.sh"
        tb_user_facts
        tb_as_user bash -c 'cd "$0" && exec python contrib/bench/bench.py --lane host --json bench.json "$@"' \
            "$TB_SRC" "$@"
        cp "$TB_SRC/bench.json" "$out/host.json"
    else
        tb_lane_facts "$lane"
        tree=$(bash "$here/tree.sh" "$lane")
        bash "$here/registry.sh"
        tb_enter "$tree" v2 env TB_LANE="$lane" bash -euo pipefail -c '
            bash /mnt/mwp-src/contrib/testbed/setup.sh
            . /mnt/mwp-src/contrib/testbed/lib.sh
            tb_user_facts
            tb_as_user bash -c "cd \"\$0\" && exec python contrib/bench/bench.py --lane $1 --json bench.json \"\$@\"" \
                "$TB_SRC" "${@:2}"
        ' _ "$lane" "$@"
        cp "$tree/home/$TB_USER/miniwdl_podman/bench.json" "$out/$lane.json"
        for uid in "$TB_LANE_UID" "$((TB_LANE_UID + 1))"; do pkill -KILL -u "$uid" 2>/dev/null || true; done
    fi
    results+=("$lane=$out/$lane.json")
done
python3 "$repo/contrib/bench/bench.py" combine "$repo/docs/benchmarks.md" "${results[@]}"
tb_log "wrote $repo/docs/benchmarks.md"
