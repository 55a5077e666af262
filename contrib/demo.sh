#!/usr/bin/env bash
# One command, as root on a fresh Debian 12 machine with no container registry: prepare rootless
# Podman for an unprivileged user (contrib/testbed/setup.sh --minimal: Podman, runc, overlay,
# a local image), then run the example WDL workflow with the podman_rootless backend as that
# user, and show that its outputs are owned by the user.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=testbed/lib.sh
. "$here/testbed/lib.sh"
[ "$(id -u)" = 0 ] || tb_die "run as root (a user whose Podman already works: see README)"

bash "$here/testbed/setup.sh" --minimal
tb_user_facts
tb_log "running contrib/examples/hello.wdl as $TB_USER with the podman_rootless backend"
tb_as_user bash -c '
    set -euo pipefail
    cd "$HOME"
    MINIWDL__SCHEDULER__CONTAINER_BACKEND=podman_rootless \
        miniwdl run "$0/contrib/examples/hello.wdl" who=Alice who=Bob who=Carol \
        --dir "$HOME/miniwdl-demo/"
    echo "--- outputs (owner uid:gid, file):"
    find -L "$HOME/miniwdl-demo/_LAST/out" -type f -exec stat -c "%u:%g %n" {} +
    cat "$HOME/miniwdl-demo/_LAST/out/all/all.txt"
' "$TB_SRC"
