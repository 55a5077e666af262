"""The Podman processes the backend starts: a private API service, and ``podman unshare``.

When no API socket answers (or ``service = private``), a private ``podman system service
--time=0`` is started on a socket in a fresh 0700 directory owned by the user, and stopped when
miniwdl exits. It is tied to a pipe held by this process: if miniwdl dies without cleaning up
(even by SIGKILL), the pipe closes and the service stops, so no stray service is left behind.
It runs in its own session, so a Ctrl-C to miniwdl's terminal does not kill it before the
backend has removed its containers. Every such process gets the environment without variables
that would break it here (an ``XDG_RUNTIME_DIR`` the user cannot write). Whether a socket
*answers* is asked through a probe function supplied by the connection.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from ..errors import GENERIC_HINT, PodmanUnavailable, hint_for
from ..host import private_dir
from ..settings import SECTION, Settings

SOCKET_NAME = "podman.sock"

# The wrapper holds the service and exits with it; a reader on fd 3 (a pipe from miniwdl) stops
# the service when the pipe reaches EOF, which happens when miniwdl closes it or dies.
_WRAPPER = r"""
exec 3<&0
url=$1
shift
"$0" "$@" system service --time=0 "$url" </dev/null &
svc=$!
{ read -r _ignored <&3; kill -TERM "$svc" 2>/dev/null; } &
reader=$!
exec 3<&-
wait "$svc"
status=$?
kill "$reader" 2>/dev/null
exit "$status"
"""
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL
_MAX_SOCKET_PATH = 107


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


class PrivateService:
    """A ``podman system service`` owned by this process, on a socket in a private directory."""

    def __init__(self, podman_exe: str, base_dir: str, args: Sequence[str] = ()) -> None:
        self.podman_exe = podman_exe
        self.args = list(args)  # global podman options, e.g. --root/--runroot
        # the socket path must fit in sockaddr_un: check before making anything
        longest = os.path.join(base_dir, "miniwdl-podman-XXXXXXXX", SOCKET_NAME)
        if len(os.fsencode(longest)) > _MAX_SOCKET_PATH:
            raise PodmanUnavailable(
                f"the private Podman API socket would be too long a path for a unix socket"
                f" ({len(os.fsencode(longest))} > {_MAX_SOCKET_PATH} bytes) under {base_dir};"
                f" set [{SECTION}] runtime_dir (env MINIWDL__{SECTION.upper()}__RUNTIME_DIR) to a"
                " shorter directory, e.g. /tmp/$USER-podman"
            )
        self.dir = tempfile.mkdtemp(prefix="miniwdl-podman-", dir=base_dir)
        self.socket_path = os.path.join(self.dir, SOCKET_NAME)
        self.url = "unix://" + self.socket_path
        self.log_path = os.path.join(self.dir, "service.log")
        self._proc: Optional[subprocess.Popen[bytes]] = None

    def start(self, probe: Callable[[str], bool], timeout: float) -> None:
        """Start the service and wait until ``probe(url)`` is true; raise PodmanUnavailable."""
        exe = shutil.which(self.podman_exe)
        if not exe:
            self.cleanup()
            raise PodmanUnavailable(
                f"podman executable {self.podman_exe!r} not found, so no private Podman"
                " API service can be started; install Podman (Debian/Ubuntu: apt-get install"
                f" podman) or set [{SECTION}] podman to its path, or [{SECTION}] socket to a"
                " running service's socket"
            )
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", _WRAPPER, exe, self.url, *self.args],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=podman_environ(os.environ),
            )
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            if os.path.exists(self.socket_path) and probe(self.url):
                return
            exited = self._proc.poll() is not None
            if exited or time.monotonic() > deadline:
                why = (
                    f"exited with status {self._proc.returncode}"
                    if exited
                    else f"did not answer within {timeout:g} s"
                )
                tail = self.log_tail()
                self.stop()
                if tail and hint_for(tail) != GENERIC_HINT:
                    fix = hint_for(tail)
                elif exited:
                    fix = "check that `podman info` works as you"
                else:
                    fix = (
                        "check that `podman info` works as you, or raise"
                        f" [{SECTION}] service_start_timeout if the host is just slow"
                    )
                raise PodmanUnavailable(
                    f"private Podman API service ({exe} system service) {why}"
                    + (f": {tail}" if tail else "")
                    + f"; {fix}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def log_tail(self, lines: int = 3) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                text = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
        except OSError:
            return ""
        text = [ln for ln in text if "is not a shared mount" not in ln]
        return " | ".join(text[-lines:])

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """Stop the service (close the pipe; TERM then KILL its process group) and clean up."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        proc.wait(grace)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        self._proc = None
        self.cleanup()

    def restart(self, probe: Callable[[str], bool], timeout: float) -> None:
        """Start again on the same socket path (after the service died)."""
        if self.alive():
            return
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self.start(probe, timeout)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


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
