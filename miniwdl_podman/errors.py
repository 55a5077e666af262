"""User-facing error types of the backend.

Every error raised to miniwdl is one of these (or one of miniwdl's own runtime errors), and its
message names the cause *and* the fix: which option to set or which command to run. The engine
translates podman-py exceptions into these at its boundary, so no podman-py or requests type
ever reaches miniwdl, and miniwdl prints one line instead of a traceback.
"""

from __future__ import annotations

from typing import List, Tuple

from WDL import Error
from WDL.runtime.error import DownloadFailed, Interrupted

__all__ = [
    "BackendError",
    "ConfigError",
    "ContainerFailed",
    "DownloadFailed",
    "ImagePullFailed",
    "Interrupted",
    "PodmanUnavailable",
]


class BackendError(Error.RuntimeError):
    """Base class of the backend's own errors."""


class ConfigError(BackendError):
    """A ``[podman_rootless]`` option has an invalid value; the message names the option."""


class PodmanUnavailable(BackendError):
    """No Podman API service could be reached or started."""


class ContainerFailed(BackendError):
    """Podman refused to create or start the task's container (not the command's exit code)."""


class ImagePullFailed(DownloadFailed):
    """An image could not be found locally nor pulled; carries the registry's message."""

    def __init__(self, image: str, message: str) -> None:
        super().__init__(image, message)
        self.image = image


# Known Podman failure texts (as the API returns them) and the fix to print with them.
_HINTS: Tuple[Tuple[Tuple[str, ...], str], ...] = (
    (
        ("statfs",),
        "a path that exists here is missing in rootless Podman's mount namespace, which was made"
        " before its file system was mounted (e.g. autofs/NFS, with / not a shared mount): run"
        " `podman system migrate` to restart Podman's pause process, or have an administrator"
        " make / a shared mount (`mount --make-rshared /`)",
    ),
    (
        ("cgroups in hybrid mode", "crun"),
        "this host's cgroup setup needs the runc runtime: install runc and set"
        ' `[engine] runtime = "runc"` in ~/.config/containers/containers.conf',
    ),
    (
        ("cgroups v1 not supported",),
        "this Podman (6.0 or newer) runs only on cgroup v2 hosts: boot the host with cgroup v2"
        " (kernel argument systemd.unified_cgroup_hierarchy=1), or use Podman 5.x or 4.x here",
    ),
    (
        (
            'invalid network "slirp4netns"',
            "slirp4netns support has been removed",
            "support has been removed, use --network=pasta",
        ),
        "this Podman (6.0 or newer) has no slirp4netns: set [podman_rootless] network to pasta"
        " (or leave it empty for Podman's default), and drop slirp4netns from allow_networks",
    ),
    (
        ("/dev/net/tun", "slirp4netns", "pasta"),
        "rootless networking failed: set [podman_rootless] network = none if tasks need no"
        " network, or ask an administrator to make /dev/net/tun usable (chmod 666 /dev/net/tun)",
    ),
    (
        ("newuidmap", "newgidmap"),
        "install the uidmap package (newuidmap/newgidmap) so rootless Podman can map ids",
    ),
    (
        ("/etc/subuid", "/etc/subgid", "subuid", "setup user: invalid argument"),
        "your user needs a subordinate uid/gid range: ask an administrator to run"
        " `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER`,"
        " then run `podman system migrate`",
    ),
    (
        ("unauthorized", "authentication required", "requested access to the resource is denied"),
        "the registry wants credentials: `podman login REGISTRY` (they go to"
        " $XDG_RUNTIME_DIR/containers/auth.json, this host's only), or `podman login --authfile"
        " FILE REGISTRY` and `export REGISTRY_AUTH_FILE=FILE` before `miniwdl run`; with"
        " podman_rootless_slurm, FILE must be on a file system the compute nodes share",
    ),
    (
        ("runroot is longer than",),
        "Podman takes a run root (its --runroot) of at most 50 characters: for the Slurm"
        " backend's node store that is node_storage + /run, so set [podman_rootless_slurm]"
        " node_storage to a shorter path (e.g. /tmp/mwp-%u); otherwise shorten --runroot in"
        " [podman_rootless] service_args",
    ),
    (
        ("no space left on device",),
        "Podman's storage is full: free space with `podman system prune` (or `podman image"
        " prune -a`), or move it to a bigger disk (graphroot in"
        " ~/.config/containers/storage.conf); it is at {graph_root}",
    ),
)

GENERIC_HINT = (
    "check that `podman run --rm IMAGE true` works as you (see the README's troubleshooting)"
)


def hint_for(message: str, graph_root: str = "") -> str:
    """The fix for a Podman error message, or the generic advice when it is not a known one."""
    lower = message.lower()
    for needles, hint in _HINTS:
        if any(n.lower() in lower for n in needles):
            return hint.replace(
                "{graph_root}", graph_root or "`podman info --format {{.Store.GraphRoot}}`"
            )
    return GENERIC_HINT


def explain_task_failure(
    stderr_tail: str, disk_full: bool, selinux_enforcing: bool, selinux: str
) -> List[str]:
    """Explanations of a failed task's well-known causes, from the tail of its stderr and the
    state of its disk: a full disk (the task's own "No space left on device" may not even fit
    in stderr.txt there), and SELinux denials of confined containers on an enforcing host."""
    tail = stderr_tail.lower()
    ans = []
    if disk_full or "no space left on device" in tail:
        ans.append(
            "the task ran out of disk space ('No space left on device'): free space where the"
            " run directory is, or run it elsewhere (miniwdl run --dir)"
        )
    if selinux_enforcing and selinux != "disable" and "permission denied" in tail:
        ans.append(
            "the task hit 'Permission denied' on an SELinux-enforcing host with confined"
            " containers; inputs are never relabelled, so set [podman_rootless] selinux ="
            " disable (env MINIWDL__PODMAN_ROOTLESS__SELINUX=disable), or label the inputs for"
            " containers (chcon -t container_file_t ...)"
        )
    return ans
