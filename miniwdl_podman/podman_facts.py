"""What the Podman behind the API service is and can do: the one place for version differences.

Built once per connection from the service's ``/info`` answer (pure: no I/O here; ``/info``
carries the version too, and ``/version`` costs the service as much again: 0.23-0.30 s a call
on Podman 4.3.1). Every difference between Podman 4.3, 4.9, 5.x and 6.x that the backend or
doctor must know is a property of :class:`PodmanFacts`, so no other module compares version
strings:

- the oldest Podman supported (``keep-id:uid=,gid=``, which images with a non-root USER need,
  came in 4.3);
- cgroup version and the controllers delegated to the user (what limits can be enforced);
- the OCI runtime, and whether it works on this cgroup layout (crun refuses cgroup v1 hybrid);
- rootless networking: slirp4netns (4.x default; removed in 6.0) or pasta (5.0 default);
- cgroup v1 support at all (removed in 6.0).

Pull failures are not here: the engine reads both forms (a 200 stream carrying ``error`` up to
5.x, an HTTP error status from 6.0), whatever the version says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, FrozenSet, Mapping, Optional, Tuple

MIN_VERSION = (4, 3, 0)


def parse_version(text: str) -> Tuple[int, int, int]:
    """``"5.4.2"`` → (5, 4, 2); ``"6.1.1-dev"`` → (6, 1, 1); unknown → (0, 0, 0)."""
    m = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", text or "")
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0))


@dataclass(frozen=True)
class PodmanFacts:
    """One Podman service's version and host facts, and what follows from them."""

    version_text: str = ""
    api_version: str = ""
    rootless: bool = True
    cgroup_version: str = ""  # "v1" or "v2"
    cgroup_controllers: FrozenSet[str] = frozenset()
    runtime: str = ""
    rootless_network: str = ""  # the default rootless network: "slirp4netns" or "pasta"
    storage_driver: str = ""
    graph_root: str = ""
    run_root: str = ""

    @property
    def version(self) -> Tuple[int, int, int]:
        return parse_version(self.version_text)

    @property
    def supported(self) -> bool:
        """Whether this Podman is one the backend supports (unknown versions are given the
        benefit of the doubt)."""
        return self.version == (0, 0, 0) or self.version >= MIN_VERSION

    @property
    def unsupported_reason(self) -> Optional[str]:
        """Why this Podman cannot be used, naming the version found and the fix; or None."""
        if self.supported:
            return None
        oldest = ".".join(map(str, MIN_VERSION))
        return (
            f"Podman {self.version_text} is older than {oldest}, the oldest this backend"
            f" supports (images with a non-root USER need keep-id:uid=,gid=, new in 4.3);"
            f" upgrade Podman to {oldest} or newer"
        )

    @property
    def has_slirp4netns(self) -> bool:
        """Whether slirp4netns is still a rootless network option (Podman 6 removed it)."""
        return self.version < (6, 0, 0)

    @property
    def supports_cgroup_v1(self) -> bool:
        return self.version < (6, 0, 0)

    @property
    def runtime_fails_on_cgroups(self) -> bool:
        """crun on a cgroup v1 (hybrid) host fails every container; runc works there."""
        return self.runtime == "crun" and self.cgroup_version == "v1"


def from_service(info: Mapping[str, Any]) -> PodmanFacts:
    """The facts in a service's ``/info`` answer (libpod's field names)."""
    host = info.get("host") or {}
    store = info.get("store") or {}
    version = info.get("version") or {}
    text = str(version.get("Version") or "")
    network = str(host.get("rootlessNetworkCmd") or "")
    if not network:  # 4.x does not say: its rootless default is slirp4netns
        network = "pasta" if parse_version(text) >= (5, 0, 0) else "slirp4netns"
    return PodmanFacts(
        version_text=text,
        api_version=str(version.get("APIVersion") or ""),
        rootless=bool((host.get("security") or {}).get("rootless", True)),
        cgroup_version=str(host.get("cgroupVersion") or ""),
        cgroup_controllers=frozenset(str(c) for c in host.get("cgroupControllers") or []),
        runtime=str((host.get("ociRuntime") or {}).get("name") or ""),
        rootless_network=network,
        storage_driver=str(store.get("graphDriverName") or ""),
        graph_root=str(store.get("graphRoot") or ""),
        run_root=str(store.get("runRoot") or ""),
    )


# -- which hard limits can be enforced ------------------------------------------------------

CGROUP_V2_DELEGATION_FIX = (
    "delegate the controllers to users: create /etc/systemd/system/user@.service.d/delegate.conf"
    " with `[Service]` and `Delegate=cpu cpuset io memory pids`, run `systemctl daemon-reload`,"
    " and log in again"
)
CGROUP_V1_FIX = (
    "boot the host with cgroup v2 (kernel argument systemd.unified_cgroup_hierarchy=1) and "
    + CGROUP_V2_DELEGATION_FIX
)


@dataclass(frozen=True)
class Enforcement:
    """Which hard limits rootless Podman can set on this host, and if not, why and the fix."""

    cpu: bool
    memory: bool
    why_not: str = ""  # what keeps the others from being enforced ("" when both are)

    # how to make them enforceable
    fix: str = ""


def enforcement(facts: PodmanFacts) -> Enforcement:
    """What the service's facts say about cgroups: version and the controllers delegated to us."""
    if not facts.rootless:
        return Enforcement(cpu=True, memory=True)
    if facts.cgroup_version != "v2":
        return Enforcement(
            cpu=False,
            memory=False,
            why_not=f"cgroup {facts.cgroup_version or 'v1'}: rootless Podman cannot set resource"
            " limits",
            fix=CGROUP_V1_FIX,
        )
    cpu, memory = "cpu" in facts.cgroup_controllers, "memory" in facts.cgroup_controllers
    missing = [c for c, ok in (("cpu", cpu), ("memory", memory)) if not ok]
    if not missing:
        return Enforcement(cpu=True, memory=True)
    return Enforcement(
        cpu=cpu,
        memory=memory,
        why_not=f"cgroup v2 without the {' and '.join(missing)} controller delegated to your user",
        fix=CGROUP_V2_DELEGATION_FIX,
    )
