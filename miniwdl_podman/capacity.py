"""How much of this host the tasks may use: CPUs and memory for miniwdl's scheduling.

The host's CPUs and memory, reduced to this process's CPU affinity and to the tightest CPU
quota and memory limit of its cgroup **and every ancestor cgroup**, on cgroup v1 and v2 (a cap
on a login node's user slice, or on the Slurm allocation miniwdl runs inside, is usually set
on an ancestor, not on the process's own leaf cgroup). Where each hierarchy is mounted is read
from ``/proc/self/mountinfo``, so a cgroup namespace or a hybrid layout is read correctly.
:func:`cgroup_limits` is pure over the texts and a file reader; :func:`host_capacity` reads the
live host.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import psutil

from .host import read_text, unescape_mount_field

_UNLIMITED = 1 << 60  # v1 reports "no limit" as a huge page-rounded number


@dataclass(frozen=True)
class _CgroupMount:
    root: str  # the hierarchy's directory mounted here
    mount_point: str
    v2: bool
    controllers: Tuple[str, ...]


def _cgroup_mounts(mountinfo: str) -> List[_CgroupMount]:
    ans = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 1 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        options = tuple(tail[2].split(",")) if len(tail) > 2 else ()
        ans.append(
            _CgroupMount(
                unescape_mount_field(fields[3]),
                unescape_mount_field(fields[4]),
                tail[0] == "cgroup2",
                options,
            )
        )
    return ans


def _directories(mount: _CgroupMount, path: str) -> List[str]:
    """The directories of the cgroup ``path`` and of each ancestor visible under ``mount``,
    leaf first."""
    root = mount.root.rstrip("/") or "/"
    if root != "/" and not (path == root or path.startswith(root + "/")):
        return []  # the hierarchy mounted here does not contain this cgroup
    rel = posixpath.relpath(path, root) if root != "/" else path.lstrip("/")
    parts = [p for p in rel.split("/") if p and p != "."]
    return [posixpath.join(mount.mount_point, *parts[:n]) for n in range(len(parts), -1, -1)]


def _cpus(quota: int, period: int) -> Optional[int]:
    if quota <= 0 or period <= 0:
        return None
    return max(1, -(-quota // period))


def cgroup_limits(
    proc_cgroup: str, mountinfo: str, read: Callable[[str], Optional[str]]
) -> Tuple[Optional[int], Optional[int]]:
    """(CPUs, memory bytes) allowed by the tightest quota and limit of this process's cgroups
    and all their ancestors, each None when nothing limits it. ``read(path)`` gives a file's
    text or None."""
    cpu: Optional[int] = None
    mem: Optional[int] = None

    def tighter(old: Optional[int], new: Optional[int]) -> Optional[int]:
        return new if old is None or (new is not None and new < old) else old

    def number(path: str) -> Optional[int]:
        text = (read(path) or "").strip()
        try:
            return int(text)
        except ValueError:
            return None

    mounts = _cgroup_mounts(mountinfo)
    for line in proc_cgroup.splitlines():
        hid, _sep, rest = line.partition(":")
        controllers, _sep, path = rest.partition(":")
        if not hid or not path:
            continue
        v2 = hid == "0" and controllers == ""
        wanted = set(controllers.split(","))
        for mount in mounts:
            if mount.v2 != v2 or (not v2 and not wanted & set(mount.controllers)):
                continue
            for d in _directories(mount, path):
                if v2:
                    limit = (read(posixpath.join(d, "memory.max")) or "").strip()
                    if limit.isdigit():
                        mem = tighter(mem, int(limit))
                    quota = (read(posixpath.join(d, "cpu.max")) or "").split()
                    if len(quota) == 2 and quota[0].isdigit() and quota[1].isdigit():
                        cpu = tighter(cpu, _cpus(int(quota[0]), int(quota[1])))
                    continue
                if "memory" in mount.controllers:
                    limit_v1 = number(posixpath.join(d, "memory.limit_in_bytes"))
                    if limit_v1 is not None and 0 < limit_v1 < _UNLIMITED:
                        mem = tighter(mem, limit_v1)
                if "cpu" in mount.controllers:
                    quota_v1 = number(posixpath.join(d, "cpu.cfs_quota_us"))
                    period_v1 = number(posixpath.join(d, "cpu.cfs_period_us"))
                    if quota_v1 is not None and period_v1 is not None:
                        cpu = tighter(cpu, _cpus(quota_v1, period_v1))
    return cpu, mem


def _read_or_none(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read(4096)
    except OSError:
        return None


def host_capacity() -> Dict[str, int]:
    """{"cpu": usable CPUs, "mem_bytes": usable memory} for tasks on this host: the tightest
    of the host, the CPU affinity, and every cgroup limit above this process."""
    try:
        cpu = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpu = os.cpu_count() or 1
    mem = int(psutil.virtual_memory().total)
    quota, limit = cgroup_limits(
        read_text("/proc/self/cgroup"), read_text("/proc/self/mountinfo"), _read_or_none
    )
    if quota is not None:
        cpu = min(cpu, quota)
    if limit is not None:
        mem = min(mem, limit)
    return {"cpu": max(1, cpu), "mem_bytes": mem}
