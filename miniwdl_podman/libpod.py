"""Podman's dialect: a :class:`~miniwdl_podman.spec.ContainerSpec` as the body of libpod's
documented ``POST /libpod/containers/create`` request (its SpecGenerator JSON).

Pure, and used only by the engine. It replaces podman-py's private
``CreateMixin._render_payload``, so that a podman-py upgrade cannot change what is created: the
fields written here are libpod's own names, stable across Podman 4.3 to 6.x.
"""

from __future__ import annotations

from typing import Any, Dict, List

from .errors import BackendError
from .mounts import Mount, api_safe
from .spec import ContainerSpec

CPU_PERIOD = 100_000  # microseconds: a limit of N CPUs is a quota of N periods


def mount(m: Mount) -> Dict[str, Any]:
    """One entry of the create body's ``mounts`` (libpod options ``ro``, ``z``/``Z``, ``mode``)."""
    if m.kind == "tmpfs":
        # mode 1777 like /tmp: writable whatever uid the task runs as inside
        return {
            "type": "tmpfs",
            "source": "tmpfs",
            "destination": m.target,
            "options": ["mode=1777"],
        }
    for path in (m.source, m.target):
        if not api_safe(path):  # the plan stages or aliases every such path: a bug if seen here
            raise BackendError(f"a mount path the Podman API cannot carry reached it: {path!r}")
    options: List[str] = []
    if m.read_only:
        options.append("ro")
    if m.relabel:
        options.append(m.relabel)
    return {"type": "bind", "source": m.source, "destination": m.target, "options": options}


# libpod's network namespace modes; any other name is a network made with `podman network create`
NETNS_MODES = ("none", "host", "private", "bridge", "slirp4netns", "pasta", "ns", "container")


def network(name: str) -> Dict[str, Any]:
    """The create body's network fields for ``[podman_rootless] network`` /
    runtime.docker_network: a namespace mode (``none``, ``host``, ``pasta``, ``ns:PATH`` ...) or
    the name of a Podman network (joined in bridge mode)."""
    mode, _, value = name.partition(":")
    if mode == "ns":
        return {"netns": {"nsmode": "path", "value": value}}
    if mode in NETNS_MODES:
        return {"netns": {"nsmode": mode, **({"value": value} if value else {})}}
    return {"netns": {"nsmode": "bridge"}, "networks": {name: {}}}


def create_body(spec: ContainerSpec) -> Dict[str, Any]:
    """The SpecGenerator for ``spec``: only what it sets (Podman's defaults for the rest)."""
    body: Dict[str, Any] = {
        "name": spec.name,
        "image": spec.image,
        "command": list(spec.command),
        "work_dir": spec.working_dir,
        "mounts": [mount(m) for m in spec.mounts],
        "env": dict(spec.environment),
        "labels": dict(spec.labels),
        "init": spec.init,
    }
    userns = spec.identity.userns
    if isinstance(userns, dict):
        body["userns"] = dict(userns)
    elif userns:
        body["userns"] = {"nsmode": userns}
    if spec.identity.user:
        body["user"] = spec.identity.user
    if spec.security_opt:
        body["selinux_opts"] = list(spec.security_opt)
    if spec.devices:
        body["devices"] = [{"path": d} for d in spec.devices]
    limits: Dict[str, Any] = {}
    if spec.limits.get("cpu", 0) > 0:
        limits["cpu"] = {"period": CPU_PERIOD, "quota": spec.limits["cpu"] * CPU_PERIOD}
    if spec.limits.get("memory_bytes", 0) > 0:
        limits["memory"] = {"limit": spec.limits["memory_bytes"]}
    if limits:
        body["resource_limits"] = limits
    if spec.network:
        body.update(network(spec.network))
    if spec.privileged:
        body["privileged"] = True
    return body
