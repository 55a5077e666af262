"""The environment of the Podman processes the backend starts, and ``podman unshare``.

Every Podman process the backend starts (a private API service: :mod:`.services`; ``podman
unshare``) gets the environment without variables that would break it here (an
``XDG_RUNTIME_DIR`` the user cannot write, a ``TMPDIR`` that does not exist, ...), and a private
service's socket goes under :func:`runtime_base`, a 0700 directory of the user's.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import PodmanUnavailable
from ..host import private_dir
from ..settings import SECTION, Settings

SOCKET_NAME = "podman.sock"


def _usable_private_dir(path: str, uid: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and (st.st_mode & 0o077) == 0


def unusable_runtime_dir(environ: Mapping[str, str]) -> Optional[str]:
    """``$XDG_RUNTIME_DIR`` if it is set but is not a directory this user can write, else None.

    Podman given such a one fails every container (runc: ``mkdir /run/user/N: permission
    denied``). It happens on a compute node, where a batch job inherits the login node's
    ``/run/user/<uid>`` (sbatch exports the environment) but no user session made it, and after
    ``su``, which keeps the other user's. Without it Podman picks a runtime dir of its own.
    """
    xdg = environ.get("XDG_RUNTIME_DIR")
    if xdg is None or (os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK)):
        return None
    return xdg


# directories and files Podman reads from the environment; one that is set but names nothing
# usable (a login node's, exported to a compute node by sbatch; a stale one after su) breaks it
_DIR_VARS = ("TMPDIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "HOME")
# what else Podman reads that makes two services differ (beside CONTAINERS_*): a warm service
# keeps what it read at its start, so a run with other registry credentials, proxies or CA
# certificates must not reuse one started without them
_PODMAN_READS = (
    *_DIR_VARS, "XDG_RUNTIME_DIR", "CONTAINER_HOST", "STORAGE_DRIVER", "STORAGE_OPTS",
    "REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "BUILDAH_ISOLATION", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)  # fmt: skip
_FILE_VARS = (
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
    "CONTAINERS_REGISTRIES_CONF",
    "CONTAINERS_POLICY_JSON",
)


def unusable_environment(environ: Mapping[str, str]) -> Dict[str, str]:
    """The variables Podman reads that name nothing usable here → why (an empty dict when all
    fit): ``XDG_RUNTIME_DIR`` this user cannot write; a directory variable (``TMPDIR``,
    ``HOME``, ``XDG_*_HOME``) that is not a directory; a ``CONTAINERS_*`` file that is not a
    file. Podman 4.3 given such a ``TMPDIR`` panics in its image look-up (HTTP 500)."""
    bad: Dict[str, str] = {}
    if unusable_runtime_dir(environ) is not None:
        bad["XDG_RUNTIME_DIR"] = "not a directory you can write"
    for var in _DIR_VARS:
        value = environ.get(var)
        if value is not None and not os.path.isdir(value):
            bad[var] = "not a directory"
    for var in _FILE_VARS:
        value = environ.get(var)
        if value is not None and not os.path.isfile(value):
            bad[var] = "not a file"
    return bad


def podman_environ(environ: Mapping[str, str]) -> Dict[str, str]:
    """The environment for the Podman processes the backend starts (a private API service,
    ``podman unshare``): ``environ`` without the variables :func:`unusable_environment` names
    (Podman then uses its defaults; an unusable ``HOME`` becomes the user's home from the passwd
    database, when that is a directory)."""
    env = dict(environ)
    bad = unusable_environment(environ)
    for var in bad:
        del env[var]
    if "HOME" in bad:
        with contextlib.suppress(KeyError):
            home = pwd.getpwuid(os.getuid()).pw_dir
            if os.path.isdir(home):
                env["HOME"] = home
    return env


def runtime_base(settings: Settings, environ: Mapping[str, str], uid: Optional[int] = None) -> str:
    """The per-user 0700 directory under which a private service's socket directory is made.

    ``[podman_rootless] runtime_dir`` if set; else ``$XDG_RUNTIME_DIR`` when it is a 0700
    directory of the user's; else ``/tmp/miniwdl-podman-<uid>`` (local disk, created 0700).
    """
    uid = os.geteuid() if uid is None else uid
    if settings.runtime_dir:
        base = os.path.expanduser(settings.runtime_dir)
        where = f"[{SECTION}] runtime_dir"
    elif environ.get("XDG_RUNTIME_DIR") and _usable_private_dir(environ["XDG_RUNTIME_DIR"], uid):
        return environ["XDG_RUNTIME_DIR"]
    else:
        base = private_dir(uid)
        where = "the default private runtime dir"
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
    except OSError as exn:
        raise PodmanUnavailable(
            f"cannot create {where} {base}: {exn.strerror}; set [{SECTION}] runtime_dir"
            f" (env MINIWDL__{SECTION.upper()}__RUNTIME_DIR) to a directory of yours on local disk"
        ) from None
    if not _usable_private_dir(base, uid):
        raise PodmanUnavailable(
            f"{where} {base} must be a directory owned by uid {uid} with mode 0700"
            f" (fix: chmod 700 {base}, or set [{SECTION}] runtime_dir elsewhere)"
        )
    return base


def unshare_chown(podman_exe: str, paths: List[str]) -> Optional[str]:
    """Give ``paths`` back to the invoking user via ``podman unshare chown``; error or None.

    Inside ``podman unshare`` the invoking user is root and subordinate ids are visible, so
    files a task left owned by other (subordinate) uids can be chowned to 0:0, which is the
    invoking user on the host. This runs no container.
    """
    exe = shutil.which(podman_exe) or podman_exe
    for i in range(0, len(paths), 500):
        chunk = paths[i : i + 500]
        try:
            proc = subprocess.run(
                [exe, "unshare", "chown", "-h", "0:0", "--", *chunk],
                capture_output=True,
                text=True,
                errors="replace",  # its message may quote a path that is not UTF-8
                timeout=600,
                env=podman_environ(os.environ),
            )
        except (OSError, subprocess.SubprocessError) as exn:
            return str(exn)
        if proc.returncode != 0:
            return proc.stderr.strip() or f"exit status {proc.returncode}"
    return None


def storage_facts(podman_exe: str, args: List[str]) -> Tuple[str, Dict[str, Any]]:
    """The storage driver and its options as Podman reads them with these global options
    (``podman info``: the files and defaults every Podman process resolves, on this host).
    Raise PodmanUnavailable naming what failed."""
    exe = shutil.which(podman_exe) or podman_exe
    try:
        proc = subprocess.run(
            [exe, *args, "info", "--format", "json"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=120,
            env=podman_environ(os.environ),
        )
        store = (json.loads(proc.stdout) or {}).get("store") or {} if proc.returncode == 0 else {}
    except (OSError, subprocess.SubprocessError, ValueError) as exn:
        raise PodmanUnavailable(
            f"`podman info` failed: {exn}; check that it works as you"
        ) from None
    if proc.returncode != 0:
        tail = " | ".join(ln.strip() for ln in proc.stderr.splitlines()[-3:] if ln.strip())
        raise PodmanUnavailable(
            f"`podman info` failed (exit status {proc.returncode}): {tail}; check that it works"
            " as you"
        )
    return str(store.get("graphDriverName") or ""), dict(store.get("graphOptions") or {})


# run inside `podman unshare` (the user's rootless user and mount namespace, where Podman's
# storage mounts live): lazily unmount every mount at or under argv[1] (a store's driver leaves
# its graph directory mounted on itself there), then remove argv[2:]
_RELEASE = r"""
import os, shutil, subprocess, sys
top = os.path.realpath(sys.argv[1])
def unescape(f):
    return f.encode().decode("unicode_escape") if "\\" in f else f
points = []
with open("/proc/self/mountinfo") as info:
    for line in info:
        point = unescape(line.split()[4])
        if point == top or point.startswith(top + "/"):
            points.append(point)
for point in sorted(set(points), key=len, reverse=True):
    subprocess.run(["umount", "-l", point], capture_output=True)
for path in sys.argv[2:]:
    if os.path.lexists(path):
        shutil.rmtree(path)
"""


def unshare_release(podman_exe: str, top: str, remove: Sequence[str] = ()) -> Optional[str]:
    """Release what Podman's storage left mounted under ``top`` in the user's rootless mount
    namespace, then remove the trees ``remove`` (which may hold files of the user's subordinate
    ids), from inside ``podman unshare``; error or None."""
    exe = shutil.which(podman_exe) or podman_exe
    try:
        proc = subprocess.run(
            [exe, "unshare", sys.executable, "-c", _RELEASE, top, *remove],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=3600,
            env=podman_environ(os.environ),
        )
    except (OSError, subprocess.SubprocessError) as exn:
        return str(exn)
    if proc.returncode:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {proc.returncode}"
    return None
