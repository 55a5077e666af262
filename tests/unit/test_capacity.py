"""Host capacity from cgroups: the tightest limit of the process's cgroup and every ancestor."""

from __future__ import annotations

from typing import Callable, Dict, Optional

from miniwdl_podman import capacity

V1_MOUNTINFO = """\
25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V1_CGROUP = "4:memory:/user.slice/user-1000.slice/session-3.scope\n3:cpu,cpuacct:/a/b\n0::/x\n"

V2_MOUNTINFO = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V2_CGROUP = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/run.scope\n"


def _reader(files: Dict[str, str]) -> Callable[[str], Optional[str]]:
    def read(path: str) -> Optional[str]:
        return files.get(path)

    return read


def test_v1_limits_on_ancestors_are_found() -> None:
    """cgroup v1: a memory limit on the user slice and a CPU quota on a parent both count."""
    mem = "/sys/fs/cgroup/memory"
    cpu = "/sys/fs/cgroup/cpu,cpuacct"
    files = {
        f"{mem}/user.slice/user-1000.slice/session-3.scope/memory.limit_in_bytes": str(1 << 62),
        f"{mem}/user.slice/user-1000.slice/memory.limit_in_bytes": str(3 << 30),
        f"{mem}/user.slice/memory.limit_in_bytes": str(8 << 30),
        f"{mem}/memory.limit_in_bytes": "9223372036854771712",
        f"{cpu}/a/b/cpu.cfs_quota_us": "-1",
        f"{cpu}/a/b/cpu.cfs_period_us": "100000",
        f"{cpu}/a/cpu.cfs_quota_us": "150000",
        f"{cpu}/a/cpu.cfs_period_us": "100000",
    }
    assert capacity.cgroup_limits(V1_CGROUP, V1_MOUNTINFO, _reader(files)) == (2, 3 << 30)


def test_v2_limits_on_ancestors_are_found() -> None:
    """cgroup v2: memory.max and cpu.max of every ancestor; the tightest wins."""
    root = "/sys/fs/cgroup"
    leaf = f"{root}/user.slice/user-1000.slice/user@1000.service/app.slice/run.scope"
    files = {
        f"{root}/user.slice/memory.max": str(16 << 30),
        f"{root}/user.slice/user-1000.slice/memory.max": str(4 << 30),
        f"{leaf}/memory.max": "max",
        f"{root}/user.slice/cpu.max": "max 100000",
        f"{root}/user.slice/user-1000.slice/cpu.max": "300000 100000",
        f"{root}/user.slice/user-1000.slice/user@1000.service/cpu.max": "50000 100000",
    }
    assert capacity.cgroup_limits(V2_CGROUP, V2_MOUNTINFO, _reader(files)) == (1, 4 << 30)


def test_no_limits_anywhere_is_none() -> None:
    """Without any quota or limit, nothing caps the host."""
    files = {"/sys/fs/cgroup/memory.max": "max", "/sys/fs/cgroup/cpu.max": "max 100000"}
    assert capacity.cgroup_limits(V2_CGROUP, V2_MOUNTINFO, _reader(files)) == (None, None)


def test_cgroup_namespace_root_mount_is_read_at_the_mount_point() -> None:
    """Inside a cgroup namespace (path "/", mounted root "/"), the mount point's own files."""
    files = {"/sys/fs/cgroup/memory.max": str(1 << 30), "/sys/fs/cgroup/cpu.max": "200000 100000"}
    assert capacity.cgroup_limits("0::/\n", V2_MOUNTINFO, _reader(files)) == (2, 1 << 30)


def test_a_mount_of_a_sub_hierarchy_maps_paths_below_its_root() -> None:
    """A hierarchy mounted from a sub-directory (a container's view) maps the process's path
    below that root, and the ancestors above it are not visible (so not read)."""
    mountinfo = "40 1 0:26 /machine.slice/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    files = {
        "/sys/fs/cgroup/inner/memory.max": str(2 << 30),
        "/sys/fs/cgroup/memory.max": str(5 << 30),
    }
    cgroup = "0::/machine.slice/c1/inner\n"
    assert capacity.cgroup_limits(cgroup, mountinfo, _reader(files)) == (None, 2 << 30)
    assert capacity.cgroup_limits("0::/elsewhere\n", mountinfo, _reader(files)) == (None, None)


def test_host_capacity_is_positive() -> None:
    """The live host's capacity has at least one CPU and some memory."""
    got = capacity.host_capacity()
    assert got["cpu"] >= 1 and got["mem_bytes"] > 0
