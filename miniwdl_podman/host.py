"""Facts about this host that are not Podman's: file system types, subordinate ids, devices,
processes.

Shared by the backend (warnings at start) and ``doctor`` (checks and fixes). The parsing is
pure (functions of a file's text), so it is unit-tested without the files.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import select
import socket
import tempfile
from typing import Any, Dict, Iterator, Optional, Tuple

# file system types on which rootless container storage breaks (no xattrs/whiteouts, no
# user-namespaced ownership) or crawls; by /proc/self/mountinfo's type name
NETWORK_FS = {
    "nfs",
    "nfs4",
    "lustre",
    "gpfs",
    "cifs",
    "smb3",
    "smbfs",
    "beegfs",
    "ceph",
    "glusterfs",
    "panfs",
    "afs",
    "fuse.sshfs",
    "fuse.glusterfs",
    "fuse.gpfs",
    "fuse.ceph-fuse",
}


def unescape_mount_field(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse_mountinfo(text: str) -> Dict[str, str]:
    """mount point -> file system type, from /proc/self/mountinfo text (later mounts win)."""
    ans: Dict[str, str] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        ans[unescape_mount_field(fields[4])] = right.split()[0]
    return ans


def fs_type(path: str, mountinfo: Optional[str] = None) -> str:
    """The type of the file system holding ``path`` (the longest mount point it lies under)."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo") as f:
                mountinfo = f.read()
        except OSError:
            return "unknown"
    mounts = parse_mountinfo(mountinfo)
    target = os.path.realpath(path)  # resolves the symlinks of the part that exists
    best = ""
    for mount_point in mounts:
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > len(best):
            best = mount_point
    return mounts.get(best, "unknown")


def is_network_fs(kind: str) -> bool:
    return kind in NETWORK_FS or kind.startswith("nfs")


def subid_count(text: str, user: str, uid: int) -> int:
    """How many subordinate ids /etc/subuid (or /etc/subgid) text grants ``user``/``uid``."""
    total = 0
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, str(uid)) and parts[2].isdigit():
            total += int(parts[2])
    return total


def read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


# package names that differ between distribution families (the rest are the same everywhere)
_PACKAGE_NAMES = {"uidmap": {"rhel": "shadow-utils", "suse": "shadow"}}
_INSTALL = {"debian": "apt-get install", "rhel": "dnf install", "suse": "zypper install"}


def distro_family(os_release: str) -> str:
    """``debian``, ``rhel`` or ``suse`` for /etc/os-release's text (its ID and ID_LIKE), or ""
    for another."""
    fields = dict(
        (k, v.strip().strip('"').lower())
        for k, _, v in (ln.partition("=") for ln in os_release.splitlines())
        if v
    )
    ids = [fields.get("ID", ""), *fields.get("ID_LIKE", "").split()]
    for name in ids:
        if name in ("debian", "ubuntu"):
            return "debian"
        if name in ("rhel", "fedora", "centos", "rocky", "almalinux"):
            return "rhel"
        if name in ("suse", "opensuse", "sles") or name.startswith("opensuse"):
            return "suse"
    return ""


def install_hint(package: str, os_release: Optional[str] = None) -> str:
    """How to install ``package`` on this distribution (``dnf install shadow-utils`` on
    RHEL-likes for ``uidmap``, ``apt-get install uidmap`` on Debian-likes...)."""
    family = distro_family(read_text("/etc/os-release") if os_release is None else os_release)
    name = _PACKAGE_NAMES.get(package, {}).get(family, package)
    if family in _INSTALL:
        return f"{_INSTALL[family]} {name}"
    return f"your distribution's {package} package"


def free_space(path: str) -> Tuple[int, int]:
    """(free bytes available to the user, total bytes) of the file system holding ``path``."""
    probe = path
    while not os.path.exists(probe) and probe != "/":
        probe = os.path.dirname(probe)
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def tun_usable(path: str = "/dev/net/tun") -> bool:
    """Whether rootless networking (slirp4netns/pasta) can open the tun device."""
    return os.path.exists(path) and os.access(path, os.R_OK | os.W_OK)


def start_time(pid: int) -> str:
    """When process ``pid`` started, in clock ticks since boot (``/proc/PID/stat`` field 22),
    as text; "" if it cannot be read. A pid and its start time name one process: a pid that
    was recycled by a later process has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", errors="replace")
    except OSError:
        return ""
    # the command name (field 2) is in parentheses and may hold spaces or parentheses itself
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


@functools.cache
def _own_start_time(pid: int) -> str:
    return start_time(pid)


def own_start_time() -> str:
    """This process's :func:`start_time`, read once (it is recorded with every task's labels
    and ledger entry)."""
    return _own_start_time(os.getpid())


def pid_alive(pid: int, started: str = "") -> bool:
    """Whether process ``pid`` exists on this host (someone else's counts as alive) and, when
    ``started`` is given (:func:`start_time` when it was recorded), is still that process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started:
        now = start_time(pid)
        return not now or now == started
    return True


def nspid(status: str) -> Tuple[str, ...]:
    """The ``NSpid`` field of a ``/proc/PID/status`` text: the process's pid in its own pid
    namespace and every one above it, outermost first (empty: no such line)."""
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return tuple(line.split()[1:])
    return ()


class ProcessWatch:
    """The end of one process, watched through a pidfd (Linux 5.3 or later): :meth:`ended`
    blocks until it has exited, without asking anybody."""

    def __init__(self, fd: int) -> None:
        self.fd = fd  # -1: the process had already ended when the watch was asked for

    @classmethod
    def namespace_init(cls, pid: int) -> Optional[ProcessWatch]:
        """A watch on host process ``pid`` if it is the first process of a pid namespace below
        this one (a container's init); one that has ended at once if ``pid`` is gone; None if
        it cannot be watched (no pidfd, ``/proc`` hidden, a pid of another namespace than ours:
        then it is not the process that was meant)."""
        if pid <= 0:
            return None
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return cls(-1)
        except (AttributeError, OSError):
            return None
        watch = cls(fd)
        ids = nspid(read_text(f"/proc/{pid}/status"))
        if (len(ids) >= 2 and ids[-1] == "1") or (not ids and watch.ended(0)):
            return watch  # (no status: the process ended just now; the pidfd says it was it)
        watch.close()
        return None

    def ended(self, timeout: float) -> bool:
        """Whether the process has exited, waiting up to ``timeout`` seconds for it."""
        if self.fd < 0:
            return True
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ProcessWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def private_dir(uid: int) -> str:
    """The user's own directory on local disk for what the backend keeps between its
    processes (coordination ledger, pull locks, private service sockets):
    ``/tmp/miniwdl-podman-<uid>``."""
    return os.path.join(tempfile.gettempdir(), f"miniwdl-podman-{uid}")


def write_json_atomic(path: str, data: Dict[str, Any]) -> None:
    """Write JSON so that a reader (another process, or another host over NFS) never sees half
    of it."""
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
    with open(tmp, "w") as out:
        json.dump(data, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: str, mode: int = 0o600) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created with ``mode`` if needed)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
