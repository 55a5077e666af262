"""Where Podman keeps this user's images and containers, judged once for both the engine (which
logs a warning at start-up) and doctor (which reports a check and offers ``--fix``): storage on
a network file system (breaks or crawls rootless), on tmpfs (uses memory, lost at reboot), the
vfs driver (copies the whole image per container)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List

from . import host

FIX_LOCATION = (
    "move it to node-local disk (graphroot in ~/.config/containers/storage.conf):"
    " `miniwdl-podman doctor --fix` does"
)
FIX_DRIVER = (
    'use the overlay driver: driver = "overlay" in ~/.config/containers/storage.conf with a'
    " fresh graphroot (or `podman system reset`): `miniwdl-podman doctor --fix` does"
)


@dataclass(frozen=True)
class Finding:
    """One problem with the storage: ``location`` or ``driver``; ``severe`` (doctor: FAIL)."""

    topic: str
    severe: bool
    problem: str
    fix: str


def fs_types(graph_root: str, run_root: str, fs_type: Callable[[str], str]) -> Dict[str, str]:
    """The file system type of each storage directory."""
    return {p: fs_type(p) for p in (graph_root, run_root) if p}


def judge(
    graph_root: str,
    run_root: str,
    driver: str,
    fs_type: Callable[[str], str] = host.fs_type,
) -> List[Finding]:
    """What is wrong with this storage (empty: nothing)."""
    kinds = fs_types(graph_root, run_root, fs_type)
    found: List[Finding] = []
    remote = [f"{p} ({k})" for p, k in kinds.items() if host.is_network_fs(k)]
    if remote:
        found.append(
            Finding(
                "location",
                True,
                f"container storage on a network file system: {', '.join(remote)}; rootless"
                " storage there breaks (no user-namespaced ownership, no xattrs) or crawls",
                FIX_LOCATION,
            )
        )
    elif kinds.get(graph_root) == "tmpfs":
        found.append(
            Finding(
                "location",
                False,
                f"container images live on tmpfs ({graph_root}): they use memory and vanish at"
                " reboot",
                FIX_LOCATION,
            )
        )
    if driver == "vfs":
        found.append(
            Finding(
                "driver",
                False,
                "podman storage driver is vfs: every container copies its whole image (seconds"
                " per task)",
                FIX_DRIVER,
            )
        )
    return found
