#!/bin/sh
# Slurm Epilog for podman_rootless_slurm: remove the node-local Podman store of the job that
# just ended. Runs as root on the node after every job (slurm.conf: Epilog=PATH to this file).
#
# Configure the same pattern as the users' [podman_rootless_slurm] node_storage, in
# /etc/default/miniwdl-podman-epilog (or the environment), e.g.
#     NODE_STORAGE=/local/scratch/%u/mwp-%j
# %u is the job's user, %j its job id, %N the node's short name, %% a %. Only a per-job store
# is removed (the pattern must contain %j: a per-user store may serve the user's other jobs),
# and only when it is a real directory owned by the job's user under the pattern's fixed part.
# With Slurm's cgroup plugins the job's processes (Podman's service, conmon, the container and
# the rootless pause process) are already gone; Podman's mounts lived in the job's own mount
# namespace and went with it. The Epilog must not fail a node: it always exits 0 and says what
# it did on stderr (slurmd's log).
set -u
conf=${MINIWDL_PODMAN_EPILOG_CONF:-/etc/default/miniwdl-podman-epilog}
# shellcheck disable=SC1090
[ -r "$conf" ] && . "$conf"
pattern=${NODE_STORAGE:-}
job=${SLURM_JOB_ID:-}
user=${SLURM_JOB_USER:-}
uid=${SLURM_JOB_UID:-}
say() { echo "miniwdl-podman epilog (job $job): $*" >&2; }
[ -n "$pattern" ] && [ -n "$job" ] && [ -n "$user" ] && [ -n "$uid" ] || exit 0
case $pattern in
*%j*) ;;
*) say "NODE_STORAGE=$pattern has no %j: a store shared by jobs is left alone"; exit 0 ;;
esac
node=$(hostname -s)
# expand the pattern (%% first, through a placeholder)
expand() {
    printf '%s' "$1" | sed -e 's/%%/\x01/g' -e "s/%j/$job/g" -e "s/%u/$user/g" -e "s/%N/$node/g" \
        -e 's/\x01/%/g'
}
store=$(expand "$pattern")
# the fixed part: everything before the first directory that holds a pattern character
fixed=$(printf '%s' "$pattern" | sed -e 's|/[^/]*%.*$||')
[ -n "$fixed" ] || fixed=/
[ -e "$store" ] || [ -L "$store" ] || exit 0
real=$(realpath -e -- "$store" 2>/dev/null) || exit 0
base=$(realpath -e -- "$fixed" 2>/dev/null) || exit 0
case $real in
"$base"/*) ;;
*) say "$store resolves to $real, outside $base: left alone"; exit 0 ;;
esac
if [ -L "$store" ] || [ ! -d "$real" ] || [ "$(stat -c %u -- "$real")" != "$uid" ]; then
    say "$store is not a directory of $user: left alone"
    exit 0
fi
if rm -rf --one-file-system -- "$real"; then
    say "removed the job's Podman store $real"
else
    say "could not remove all of $real"
fi
exit 0
