"""The private Podman API services the backend starts when no socket of the user's answers.

With ``service_idle`` > 0 a :class:`WarmService`: found or started on a well-known socket (one
per user and set of options) and left running for the user's next run until it has been idle
that long. With ``service_idle = 0`` a :class:`PrivateService`: ``podman system service
--time=0`` on a socket in a fresh 0700 directory, stopped when miniwdl exits, and tied to a pipe
held by this process, so that it stops even if miniwdl dies by SIGKILL (its directory, left
then, is removed by the next service start: :func:`sweep_abandoned`). Both run in their own
session (a Ctrl-C to miniwdl's terminal does not kill them before the backend has removed its
containers). Whether a socket *answers* is asked through a probe function supplied by the
connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence

from WDL._util import StructuredLogMessage as _

from .. import __version__
from ..errors import GENERIC_HINT, PodmanUnavailable, hint_for
from ..host import pid_alive, read_text, start_time, write_json_atomic
from ..settings import SECTION
from .processes import _PODMAN_READS, SOCKET_NAME, _usable_private_dir, podman_environ

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
# a per-run private service's directory (tempfile.mkdtemp's 8 random characters), and the lock
# its owner holds in it for as long as it lives
_PRIVATE_PREFIX = "miniwdl-podman-"
_PRIVATE_DIR = re.compile(_PRIVATE_PREFIX + r"[a-z0-9_]{8}")
# beside it, the service's own Podman run root where it has one (Podman refuses a --runroot
# longer than 50 characters: it cannot be inside)
_RUN_ROOT_PREFIX = "mwp-run-"
OWNER_LOCK = "owner.lock"
# a directory without that lock (made by an earlier version) is left alone while this young
_UNLOCKED_GRACE_SECONDS = 60.0


class PrivateService:
    """A ``podman system service`` owned by this process, on a socket in a private directory."""

    def __init__(
        self,
        podman_exe: str,
        base_dir: str,
        args: Sequence[str] = (),
        late_args: Optional[Callable[[], Sequence[str]]] = None,
        own_run_root: bool = False,
    ) -> None:
        """``own_run_root``: give the service a Podman run root of its own (``--runroot``),
        made beside its directory and removed with it."""
        self.podman_exe = podman_exe
        self.args = list(args)  # global podman options, e.g. --root/--runroot
        # more of them, worked out only when the service is really started (they cost time)
        self._late_args = late_args
        self._answering = False
        self._owner: Optional[int] = None  # the fd of OWNER_LOCK, held while this object lives
        self.swept: List[str] = []  # abandoned directories removed by this start
        # the socket path must fit in sockaddr_un: check before making anything
        longest = os.path.join(base_dir, self._dir_name_pattern(), SOCKET_NAME)
        if len(os.fsencode(longest)) > _MAX_SOCKET_PATH:
            raise PodmanUnavailable(
                f"the private Podman API socket would be too long a path for a unix socket"
                f" ({len(os.fsencode(longest))} > {_MAX_SOCKET_PATH} bytes) under {base_dir};"
                f" set [{SECTION}] runtime_dir (env MINIWDL__{SECTION.upper()}__RUNTIME_DIR) to a"
                " shorter directory, e.g. /tmp/$USER-podman"
            )
        self.dir = self._make_dir(base_dir)
        if own_run_root:
            run_root = _run_root_of(self.dir)
            os.mkdir(run_root, 0o700)
            self.args += ["--runroot", run_root]
        self.socket_path = os.path.join(self.dir, SOCKET_NAME)
        self.url = "unix://" + self.socket_path
        self.log_path = os.path.join(self.dir, "service.log")
        self._proc: Optional[subprocess.Popen[bytes]] = None

    def _dir_name_pattern(self) -> str:
        return _PRIVATE_PREFIX + "XXXXXXXX"

    def _make_dir(self, base_dir: str) -> str:
        path = tempfile.mkdtemp(prefix=_PRIVATE_PREFIX, dir=base_dir)
        self._hold_owner_lock(path)
        return path

    def _hold_owner_lock(self, path: str) -> None:
        """Hold the directory's owner lock until :meth:`cleanup`: while it is held, no other
        process's :func:`sweep_abandoned` removes the directory."""
        # locked before it is named: a sweep never finds it free
        fresh = os.path.join(path, f"{OWNER_LOCK}.{os.getpid()}")
        fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(fresh, os.path.join(path, OWNER_LOCK))
        self._owner = fd

    def _argv(self, exe: str) -> List[str]:
        """The service, held by the wrapper on a pipe from this process (see ``_WRAPPER``)."""
        return ["/bin/sh", "-c", _WRAPPER, exe, self.url, *self.args]

    _stdin = subprocess.PIPE

    def _spawn(self, exe: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self._argv(exe),
            stdin=self._stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=podman_environ(os.environ),
            # not the caller's directory: a warm service outlives the run, and once that
            # directory is removed every container it starts fails (conmon: "Failed to get
            # working directory", exit status 1)
            cwd="/",
        )

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
        if self._late_args is not None:
            try:
                self.args += list(self._late_args())
            except PodmanUnavailable:
                self.cleanup()
                raise
            self._late_args = None
        self.swept = sweep_abandoned(os.path.dirname(self.dir))
        with open(self.log_path, "wb") as log:
            self._proc = self._spawn(exe, log)
        started = time.monotonic()
        deadline = started + timeout
        while True:
            # the socket appears about 20 ms after the start (4.3.1): look every 5 ms for the
            # first second (a stat), then back off; ask the service only once it is there
            if os.path.exists(self.socket_path) and probe(self.url):
                self._answering = True
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
            elapsed = time.monotonic() - started
            time.sleep(0.005 if elapsed < 1.0 else min(0.2, elapsed / 10))

    def report_swept(self, logger: logging.Logger) -> None:
        """Log the abandoned directories that this service's start removed."""
        for path in self.swept:
            logger.info(_("removed a killed run's private service directory", path=path))

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
                if proc.stdin is not None:
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
        if self._owner is None:
            self._hold_owner_lock(self.dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self.start(probe, timeout)

    def cleanup(self) -> None:
        _remove_private_dir(self.dir)
        if self._owner is not None:
            os.close(self._owner)
            self._owner = None


class WarmService(PrivateService):
    """A private ``podman system service --time=IDLE`` that outlives this run: the next run of
    the same user with the same options finds it on its well-known socket and reuses it (no
    cold start: Podman initialises its runtime on the first request, measured at about 0.3 s),
    and it stops itself once no request has come for IDLE seconds.

    Its directory, ``<runtime base>/miniwdl-podman-warm-<key>`` (0700, the user's), is named by
    a key of everything that makes two services differ (the podman executable, the global
    options, the environment Podman reads), so runs with other options never share one; it
    holds the socket, the service's log, ``service.json`` (pid and start time) and the facts
    cache. Starting is serialised by a lock in it: concurrent runs start one service between
    them. A run killed by SIGKILL leaves only the service, which the next run reuses (and the
    containers, which it reaps) or which stops itself.
    """

    def __init__(
        self,
        podman_exe: str,
        base_dir: str,
        args: Sequence[str],
        idle: float,
        key: str,
        late_args: Optional[Callable[[], Sequence[str]]] = None,
    ) -> None:
        self.idle = idle
        self.reused = False
        self.info_from = ""
        self._base_dir = base_dir
        self._key = key
        super().__init__(podman_exe, base_dir, args, late_args)

    def _dir_name_pattern(self) -> str:
        return f"miniwdl-podman-warm-{self._key}"

    def _make_dir(self, base_dir: str) -> str:
        path = os.path.join(base_dir, self._dir_name_pattern())
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        if not _usable_private_dir(path, os.geteuid()):
            raise PodmanUnavailable(
                f"{path} must be a directory owned by you with mode 0700 (remove it, or set"
                f" [{SECTION}] runtime_dir elsewhere)"
            )
        return path

    def _argv(self, exe: str) -> List[str]:
        """The service alone, with no tie to this process: Podman stops it after ``idle``
        seconds without a request (``--time``)."""
        return [
            exe,
            *self.args,
            "system",
            "service",
            f"--time={max(1, round(self.idle))}",
            self.url,
        ]

    _stdin = subprocess.DEVNULL

    def start(self, probe: Callable[[str], bool], timeout: float) -> None:
        """Reuse the service if it answers on the socket, else start it (one process at a
        time: the others wait on the lock, then reuse what it started)."""
        fd = os.open(os.path.join(self.dir, "start.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.exists(self.socket_path) and probe(self.url):
                if self._record().get("pause") == pause_process():
                    self.reused = self._answering = True
                    return
                # the user's rootless namespace was made anew since (`podman system migrate`,
                # the pause process died): its containers would be invisible to everything
                # else; replace the service
                self._retire()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.record_path)
            super().start(probe, timeout)
            assert self._proc is not None
            record = {"pid": self._proc.pid, "started": start_time(self._proc.pid),
                      "pause": pause_process()}  # fmt: skip
            write_json_atomic(self.record_path, record)
        finally:
            os.close(fd)

    def _retire(self) -> None:
        """Stop the service recorded here (another instance, in a stale namespace)."""
        record = self._record()
        pid, started = record.get("pid"), str(record.get("started") or "")
        if isinstance(pid, int) and pid_alive(pid, started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while pid_alive(pid, started) and time.monotonic() < deadline:
                time.sleep(0.05)

    @property
    def record_path(self) -> str:
        return os.path.join(self.dir, "service.json")

    @property
    def facts_path(self) -> str:
        return os.path.join(self.dir, "facts.json")

    def _record(self) -> Dict[str, Any]:
        try:
            with open(self.record_path) as f:
                raw = json.load(f)
            return raw if isinstance(raw, dict) else {}
        except (OSError, ValueError):
            return {}

    def cached_info(self) -> Optional[Dict[str, Any]]:
        """A ``/info`` answer still true for this service (None: ask it): the one this very
        instance gave (it does not change while the service runs), or an earlier instance's
        (same key) while nothing else it depends on has changed (:func:`facts_stamps`).
        :attr:`info_from` says which."""
        try:
            with open(self.facts_path) as f:
                cached = json.load(f)
        except (OSError, ValueError):
            return None
        info = cached.get("info") if isinstance(cached, dict) else None
        if not isinstance(info, dict):
            return None
        record = self._record()
        pid, started = record.get("pid"), str(record.get("started") or "")
        alive = isinstance(pid, int) and bool(started) and pid_alive(pid, started)
        if alive and cached.get("service") == record:
            self.info_from = "this service instance"
            return dict(info)
        if cached.get("stamps") == facts_stamps(self.podman_exe, info):
            self.info_from = "an earlier service; nothing it depends on changed since"
            return dict(info)
        return None

    def remember_info(self, info: Dict[str, Any]) -> None:
        """Keep this instance's ``/info`` answer, and what it depends on, for the next run
        (best effort)."""
        record = self._record()
        if record:
            with contextlib.suppress(OSError):
                stamps = facts_stamps(self.podman_exe, info)
                write_json_atomic(
                    self.facts_path, {"service": record, "stamps": stamps, "info": info}
                )

    def alive(self) -> bool:
        """Whether the service is known to run (one this process did not start, or that was
        restarted by another run, is found by :meth:`restart`)."""
        return False

    def restart(self, probe: Callable[[str], bool], timeout: float) -> None:
        """After the service died: start it again, unless another run did first."""
        self._answering = False
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.start(probe, timeout)

    def stop(self, grace: float = 5.0) -> None:
        """Leave a healthy service running for the next run (it stops itself when idle); stop
        one that this process started but that never came up."""
        if not self._answering:
            super().stop(grace)

    def cleanup(self) -> None:
        """Remove the directory only when no service is using it."""
        if not (os.path.exists(self.socket_path) and self._answering):
            shutil.rmtree(self.dir, ignore_errors=True)


def sweep_abandoned(base_dir: str) -> List[str]:
    """Remove from ``base_dir`` the directories of per-run private services whose owner died
    without removing them (SIGKILL), with their run roots: their owner lock is free (the
    service, tied to its owner by a pipe, stopped with it). A directory without the lock (an
    earlier version's) is removed once it has no socket and is a minute old. Warm services'
    directories are never touched (they outlive runs by design). Returns the directories
    removed."""
    removed: List[str] = []
    try:
        names = os.listdir(base_dir)
    except OSError:
        return removed
    uid = os.geteuid()
    for name in names:
        path = os.path.join(base_dir, name)
        if not _PRIVATE_DIR.fullmatch(name) or not _usable_private_dir(path, uid):
            continue
        try:
            fd = os.open(os.path.join(path, OWNER_LOCK), os.O_RDWR)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                young = time.time() - os.stat(path).st_mtime < _UNLOCKED_GRACE_SECONDS
                socket = os.path.lexists(os.path.join(path, SOCKET_NAME))
                if not young and not socket and _remove_private_dir(path):
                    removed.append(path)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # its owner lives
            continue
        if _remove_private_dir(path):
            removed.append(path)
        os.close(fd)
    return removed


def _run_root_of(private_dir: str) -> str:
    base, name = os.path.split(private_dir)
    return os.path.join(base, _RUN_ROOT_PREFIX + name[len(_PRIVATE_PREFIX) :])


def _remove_private_dir(path: str) -> bool:
    """Remove a private service's directory and its run root, if it has one; whether both are
    gone. The run root goes first: while it stays, so does the directory (and its owner lock),
    for a later sweep to try again."""
    run_root = _run_root_of(path)
    _rmtree(run_root)
    if os.path.lexists(run_root):
        return False
    _rmtree(path)
    return not os.path.lexists(path)


def _rmtree(path: str) -> None:
    """``shutil.rmtree``, through directories without search or write permission too: Podman
    6 killed while it makes a run root leaves one with mode 0600 (measured)."""
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    for root, dirs, _files in os.walk(path):  # top-down: each made searchable before entered
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o700)
    shutil.rmtree(path, ignore_errors=True)


def pause_process() -> Optional[List[Any]]:
    """[pid, start time] of the user's rootless pause process, which holds the user namespace
    and mount namespace every rootless Podman process joins (None: none running)."""
    env = podman_environ(os.environ)
    base = env.get("XDG_RUNTIME_DIR") or os.path.join(
        env.get("TMPDIR") or "/tmp", f"podman-run-{os.geteuid()}"
    )
    try:
        with open(os.path.join(base, "libpod", "tmp", "pause.pid")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    started = start_time(pid)
    return [pid, started] if started else None


# the configuration a Podman service reads once, at its start
_CONFIG_FILES = ("containers.conf", "storage.conf", "registries.conf", "policy.json", "mounts.conf")
_CONFIG_DIRS = ("containers.conf.d", "registries.conf.d")


def _config_stamps(env: Mapping[str, str]) -> List[Any]:
    """(path, mtime, size) of each configuration file Podman reads (user's, system's): a
    service started before one changed (e.g. by `doctor --fix`) is not reused."""
    home = env.get("HOME") or os.path.expanduser("~")
    user = os.path.join(env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), "containers")
    stamps: List[Any] = []
    for base in (user, "/etc/containers", "/usr/share/containers"):
        paths = [os.path.join(base, name) for name in _CONFIG_FILES]
        for d in _CONFIG_DIRS:
            with contextlib.suppress(OSError):
                names = sorted(os.listdir(os.path.join(base, d)))
                paths += [os.path.join(base, d, n) for n in names]
        for path in paths:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                stamps.append([path, st.st_mtime_ns, st.st_size])
    for var in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF"):
        with contextlib.suppress(OSError, KeyError):
            st = os.stat(env[var])
            stamps.append([env[var], st.st_mtime_ns, st.st_size])
    return stamps


def service_key(podman_exe: str, args: Sequence[str], idle: float) -> str:
    """What tells two private services apart: executable, global options, idle time, the
    environment Podman reads and its configuration files as they are now, and the version of
    this package."""
    exe = shutil.which(podman_exe) or podman_exe
    env = podman_environ(os.environ)
    read = {k: v for k, v in env.items() if k.startswith("CONTAINERS_") or k in _PODMAN_READS}
    # this package's version too: a service another version started is not assumed to be
    # started the way this one starts it
    raw = json.dumps(
        [os.path.realpath(exe), list(args), idle, sorted(read.items()), _config_stamps(env),
         __version__]
    )  # fmt: skip
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def facts_stamps(podman_exe: str, info: Mapping[str, Any]) -> List[Any]:
    """What a service's ``/info`` depends on beyond its key (:func:`service_key`: executable
    path, options, environment, configuration files): the boot (cgroup layout), this process's
    cgroup (the controllers delegated to it; a new login session or batch job has its own), the
    podman executable and the OCI runtime and conmon it reported (upgraded or replaced), the
    directories holding them (a runtime installed beside them may become the default), the
    user's subordinate ids, and the store's root (made anew by `podman system reset`). A new
    service instance reuses an earlier one's ``/info`` only while all of these are unchanged."""
    host = info.get("host") or {}
    exe = os.path.realpath(shutil.which(podman_exe) or podman_exe)
    paths = [exe, os.path.dirname(exe), "/etc/subuid", "/etc/subgid"]
    for part in ("ociRuntime", "conmon"):
        path = str((host.get(part) or {}).get("path") or "")
        if path:
            path = os.path.realpath(path)
            paths += [path, os.path.dirname(path)]
    stamps: List[Any] = [
        read_text("/proc/sys/kernel/random/boot_id").strip(),
        read_text("/proc/self/cgroup"),
    ]
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append([path, st.st_ino, st.st_mtime_ns, st.st_size])
        except OSError:
            stamps.append([path, None])
    # the store's root by identity only: its mtime moves with every service start from Podman
    # 5 on (its SQLite database, with journal files that come and go, lives there)
    graph_root = str((info.get("store") or {}).get("graphRoot") or "")
    if graph_root:
        try:
            st = os.stat(graph_root)
            stamps.append([graph_root, st.st_dev, st.st_ino])
        except OSError:
            stamps.append([graph_root, None])
    return stamps
