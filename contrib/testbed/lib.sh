# Shared helpers for the test bed scripts (sourced, not run). Bash.
# The test user is MINIWDL_PODMAN_TEST_USER (default mwpodtest).

TB_USER=${MINIWDL_PODMAN_TEST_USER:-mwpodtest}
TB_NOSUB_USER=${MINIWDL_PODMAN_TEST_NOSUB_USER:-mwpodnosub}
export MINIWDL_PODMAN_TEST_USER_PRIMARY=$TB_USER
TB_REGISTRY=${MINIWDL_PODMAN_TEST_REGISTRY:-127.0.0.1:5000}
TB_BASE_IMAGE=localhost/miniwdl-podman/busybox-bash:2
TB_NOBODY_IMAGE=localhost/miniwdl-podman/busybox-bash-nobody:2

tb_log() { printf '[testbed] %s\n' "$*" >&2; }
tb_die() { printf '[testbed] FAIL: %s\n' "$*" >&2; exit 1; }

tb_user_facts() {
    TB_UID=$(id -u "$TB_USER")
    TB_HOME=$(getent passwd "$TB_USER" | cut -d: -f6)
    TB_RUNTIME=/run/user/$TB_UID
    # the venv and source tree always belong to the primary test user
    local primary_home
    primary_home=$(getent passwd "$MINIWDL_PODMAN_TEST_USER_PRIMARY" | cut -d: -f6)
    TB_VENV=$primary_home/venv
    TB_SRC=$primary_home/miniwdl_podman
}

# run a command as the test user with a clean login-like environment
tb_as_user() {
    runuser -u "$TB_USER" -- env -i \
        HOME="$TB_HOME" USER="$TB_USER" LOGNAME="$TB_USER" SHELL=/bin/bash \
        PATH="$TB_VENV/bin:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 \
        XDG_RUNTIME_DIR="$TB_RUNTIME" \
        ${CI:+CI="$CI"} \
        "$@"
}
