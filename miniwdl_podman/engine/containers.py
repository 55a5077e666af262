"""Task containers: the libpod create request, start, a handle to wait on, kill, removal, reaping.

:class:`Containers` runs a :class:`~miniwdl_podman.spec.ContainerSpec`: create (the body written
by :mod:`miniwdl_podman.libpod`; Podman's create warnings, which podman-py drops, are logged) and
start, giving back a :class:`Running` handle: the caller polls its wait (the container's first
process watched through a pidfd, the exit code then read from Podman; where it cannot be watched,
Podman's wait: fast server-side polling for short tasks, slow for long ones, within a
per-process polling budget) and closes it, which
removes the container on every path (off the critical path once the container exited; killed
first when it may still run). Containers left by dead runs on this host are found by
their labels and reaped.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional

import requests
from podman.errors import APIError, NotFound
from WDL._util import StructuredLogMessage as _

from .. import _backoff, libpod
from .. import host as host_mod
from .._logging import notice
from ..errors import ContainerFailed, Interrupted, PodmanUnavailable, hint_for
from ..exits import Exit
from ..settings import seconds
from ..spec import LABEL_HOST, LABEL_PID, LABEL_PID_STARTED, ContainerSpec
from .connection import (
    _UNBOUNDED,
    Connection,
    _explain,
    _is_connection_error,
    _is_transient,
)

# creates sent again after a transient error or a lost connection
_CREATE_TRIES = 5
# at most this many container state checks a second, all of this process's fast waits together
_POLLS_PER_SECOND = 200
# once a watched container's first process has ended, conmon writes its exit status: Podman is
# asked for it after these pauses (about 2 s in all), then the server's wait takes over
_EXIT_STATUS_PAUSES = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032) + (0.05,) * 38
# a watched container is also asked about this often (belt and braces: a watch that was wrong)
_RECHECK_SECONDS = 30.0


def _left_by_dead_process(pid_label: str, started_label: str = "") -> bool:
    """Whether a container's labels name a process that no longer exists here (its pid gone,
    or taken by a later process: another start time)."""
    return pid_label.isdigit() and not host_mod.pid_alive(int(pid_label), started_label)


class Running:
    """A started task container. The caller polls :meth:`wait` (nothing here calls back into
    it), may :meth:`kill` it, and closes it (a context manager): the container is removed on
    every path, off the critical path once it has exited."""

    def __init__(
        self, containers: Containers, cid: str, spec: ContainerSpec, logger: logging.Logger
    ) -> None:
        self.containers = containers
        self.id = cid
        self.spec = spec
        self.logger = logger
        self.exit: Optional[Exit] = None
        self._outcome: Dict[str, Any] = {}
        self._done = threading.Event()
        self._reconnects = 0
        self._waiter()

    def _waiter(self) -> None:
        """Wait for the container's exit in a helper thread (the server-side wait blocks)."""
        self._done.clear()
        self._outcome.clear()
        containers = self.containers

        def wait() -> None:
            try:
                self._outcome["exit_code"] = containers._watch_exit(self.id)
            except BaseException as exn:
                self._outcome["error"] = exn
            finally:
                self._done.set()

        threading.Thread(target=wait, name=f"wait-{self.spec.name}", daemon=True).start()

    def wait(self, timeout: Optional[float]) -> Optional[Exit]:
        """The container's :class:`Exit` once it has ended, None if it still runs after
        ``timeout`` seconds (None: block until it ends)."""
        while self.exit is None:
            if not self._done.wait(timeout):
                return None
            if "exit_code" in self._outcome:
                self.exit = self._ended(int(self._outcome["exit_code"]))
                break
            exn = self._outcome["error"]
            name, logger, conn = self.spec.name, self.logger, self.containers.conn
            # (4.3 answers an inspect racing a removal with a 500 "no such container")
            if isinstance(exn, NotFound) or "no such container" in _explain(exn):
                raise self._removed() from None
            if _is_connection_error(exn) and self._reconnects < 5:
                self._reconnects += 1
                logger.warning(
                    _("lost the podman service while waiting; reconnecting", error=_explain(exn))
                )
                time.sleep(_backoff.delay(self._reconnects, 0.1, 3.0))
                conn.recover(logger)
                self._waiter()
                continue
            logger.error(_("podman wait failed", name=name, error=_explain(exn)))
            raise Interrupted(f"lost track of task container {name}: {_explain(exn)}") from None
        return self.exit

    def _ended(self, exit_code: int) -> Exit:
        name, logger = self.spec.name, self.logger
        if exit_code < 0:
            raise Interrupted(f"Podman could not determine how the task container {name} ended")
        msg = _("podman container exited", name=name, exit_code=exit_code)
        if exit_code == 0:
            notice(logger, msg)
            return Exit(0)
        logger.error(msg)
        # a container removed behind our back also "exits" (137, killed first): that is not
        # the command's; the removal completes just after the wait returns, so give a
        # signal-like exit a moment to show whether the container is going away
        state = self.containers._state(self.id, logger)
        deadline = time.monotonic() + (0.5 if exit_code in (137, 143) else 0.0)
        while state is not None and time.monotonic() < deadline:
            time.sleep(0.05)
            state = self.containers._state(self.id, logger)
        if state is None:
            raise self._removed()
        return Exit(exit_code, bool(state.get("OOMKilled")))

    def _removed(self) -> Interrupted:
        """The error of a container removed behind the backend's back (logged): the attempt
        was interrupted, whatever its exit status said."""
        name = self.spec.name
        self.logger.error(_("podman container disappeared while running", name=name))
        return Interrupted(
            f"task container {name} was removed while the task ran (by `podman rm`"
            " or `podman system prune`?); its exit status is not the command's"
        )

    def pid(self) -> int:
        """The host pid of the container's first process; 0 once it has exited."""
        return self.containers.pid(self.id, self.logger)

    def kill(self) -> None:
        """SIGKILL the container and give its wait a moment to return (miniwdl terminating)."""
        self.containers._kill(self.id, self.spec.name, self.logger)
        self._done.wait(10)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        containers = self.containers
        if self.exit is not None:
            # off the critical path: the task's result does not depend on the removal, and
            # close()/remove_leftovers() wait for pending removals, so nothing is orphaned
            containers._remover.submit(
                containers.remove, self.id, self.spec.name, self.logger, False
            )
        else:
            containers.remove(self.id, self.spec.name, self.logger, running=True)


class Containers:
    """The task containers of one process, on one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.settings = conn.settings
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._live: Dict[str, str] = {}  # container id -> name, for cleanup at exit
        self._waiting = 0  # server waits in flight (watched containers are not polled)
        self._remover = ThreadPoolExecutor(max_workers=4, thread_name_prefix="podman-remove")

    def start(self, spec: ContainerSpec, logger: logging.Logger) -> Running:
        """Create and start the container: a :class:`Running` handle that the caller polls and
        closes (closing removes the container on every path)."""
        cid = self.create(spec, logger)
        try:
            self._start(cid, spec, logger)
        except BaseException:
            self.remove(cid, spec.name, logger, running=True)
            raise
        return Running(self, cid, spec, logger)

    def create(self, spec: ContainerSpec, logger: logging.Logger) -> str:
        payload = libpod.create_body(spec)
        logger.debug(
            _(
                "podman create request",
                name=spec.name,
                userns=payload.get("userns"),
                user=payload.get("user"),
                selinux_opts=payload.get("selinux_opts"),
                mounts=[
                    {
                        "source": m["source"],
                        "destination": m["destination"],
                        "options": m["options"],
                    }
                    for m in payload["mounts"]
                ],
            )
        )
        body = json.dumps(payload)
        warnings: List[str] = []
        cid = ""
        for attempt in range(1, _CREATE_TRIES + 1):
            try:
                # Podman 4.3 computes keep-id mappings racily under concurrent creates (500
                # "keep-id requires additional UIDs..."); the server serialises creates anyway,
                # so one create at a time from this process costs little and avoids it.
                with self._create_lock:
                    resp = self.conn.client.api.post(
                        "/containers/create",
                        headers={"content-type": "application/json"},
                        data=body,
                    )
                resp.raise_for_status()
                answer = resp.json()
                cid, warnings = str(answer["Id"]), list(answer.get("Warnings") or [])
                break
            except APIError as exn:
                if (
                    attempt < _CREATE_TRIES
                    and _is_connection_error(exn)
                    and self.conn.recover(logger)
                ):
                    # the create may have happened before the connection broke: adopt it
                    adopted = self._id_of(spec.name)
                    if adopted:
                        cid = adopted
                        break
                    continue
                if attempt < _CREATE_TRIES and _is_transient(exn):
                    logger.info(_("podman create: transient error, retrying", error=_explain(exn)))
                    time.sleep(_backoff.delay(attempt, 0.05, 1.0))
                    continue
                logger.error(_("podman create failed", name=spec.name, error=_explain(exn)))
                if _is_connection_error(exn):
                    raise PodmanUnavailable(
                        f"Podman API service at {self.conn.url} stopped answering: {_explain(exn)}"
                    ) from None
                raise ContainerFailed(
                    f"Podman could not create the task container: {_explain(exn)};"
                    f" {hint_for(_explain(exn), self.conn.graph_root)}"
                ) from None
        with self._lock:
            self._live[cid] = spec.name
        for warning in warnings:
            logger.warning(_("podman create warning", name=spec.name, warning=warning))
        logger.info(_("podman container created", name=spec.name, id=cid[:12]))
        return cid

    def _start(self, cid: str, spec: ContainerSpec, logger: logging.Logger) -> None:
        try:
            self.conn.request("post", f"/containers/{cid}/start", logger)
        except APIError as exn:
            logger.error(_("podman start failed", name=spec.name, error=_explain(exn)))
            raise ContainerFailed(
                f"Podman could not start the task container: {_explain(exn)};"
                f" {hint_for(_explain(exn), self.conn.graph_root)}"
            ) from None
        notice(logger, _("podman container started", name=spec.name, id=cid[:12]))

    def _id_of(self, name: str) -> Optional[str]:
        """The id of the container named ``name``, if it exists."""
        try:
            resp = self.conn.client.api.get(f"/containers/{name}/json")
            resp.raise_for_status()
            return str(resp.json()["Id"])
        except APIError:
            return None

    def _running_state(self, cid: str) -> Dict[str, Any]:
        """The container's State; ``{}`` while Podman cannot tell (4.3 fails an inspect whose
        container's process ended a moment ago: "read /proc/PID/cgroup: no such process").
        Raises NotFound once the container is gone, APIError on other errors."""
        try:
            resp = self.conn.client.api.get(f"/containers/{cid}/json")
            resp.raise_for_status()
        except APIError as exn:
            if isinstance(exn, NotFound) or "no such process" not in _explain(exn):
                raise
            return {}
        return dict(resp.json().get("State") or {})

    def _watch_exit(self, cid: str) -> int:
        """Block until the container exits; its exit code. Its first process is watched through
        a pidfd, and the exit code is read from Podman as soon as conmon has written it: Podman
        4.3's wait answers only once the container's cleanup process has finished (30-130 ms
        after the exit on a quiet machine, much later under load), and polls while it waits.
        When the process cannot be watched (no pidfd, ``/proc`` hidden, a service in another
        pid namespace), the server's wait (:meth:`_wait_once`)."""
        state = self._running_state(cid)
        if state.get("Status") == "running":
            watch = host_mod.ProcessWatch.namespace_init(int(state.get("Pid") or 0))
            if watch is None:
                return self._wait_once(cid)
            with watch:
                while not watch.ended(_RECHECK_SECONDS):
                    if self._running_state(cid).get("Status") != "running":
                        break
        for pause in _EXIT_STATUS_PAUSES:
            state = self._running_state(cid)
            status = state.get("Status")
            if status in ("stopped", "exited"):
                return int(state.get("ExitCode") or 0)
            if status not in ("running", "stopping", None):
                break
            time.sleep(pause)
        return self._wait_once(cid)

    def _wait_once(self, cid: str) -> int:
        """Block until the container exits; its exit code. Polls fast for the first
        ``wait_fast_seconds`` (short tasks return at once), then slowly: each waiting request
        costs the service a state check per interval, for as long as the task runs."""
        with self._lock:
            self._waiting += 1
        try:
            params = {"condition": ["exited", "stopped"], "interval": self._fast_interval()}
            try:
                resp = self.conn.client.api.post(
                    f"/containers/{cid}/wait",
                    params=params,
                    timeout=(30.0, self.settings.wait_fast_seconds),
                )
            except APIError as exn:
                if not isinstance(exn.__cause__, requests.exceptions.ReadTimeout):
                    raise
                # the service stops polling for an abandoned wait (measured): wait again, slowly
                params["interval"] = self.settings.wait_interval_long
                resp = self.conn.client.api.post(
                    f"/containers/{cid}/wait", params=params, timeout=_UNBOUNDED
                )
            resp.raise_for_status()
            return int(resp.json())
        finally:
            with self._lock:
                self._waiting -= 1

    def _fast_interval(self) -> str:
        """``wait_interval``, stretched so that all of this process's waits together ask the
        service for at most ``_POLLS_PER_SECOND`` state checks (each costs it CPU, which the
        tasks need when many run at once)."""
        base = seconds(self.settings.wait_interval)
        with self._lock:
            waiting = self._waiting
        return f"{max(base, waiting / _POLLS_PER_SECOND) * 1000:.0f}ms"

    def _state(self, cid: str, logger: logging.Logger) -> Optional[Dict[str, Any]]:
        """The container's State (OOMKilled is unreliable upstream: podman#21749); None if the
        container no longer exists."""
        try:
            resp = self.conn.request("get", f"/containers/{cid}/json", logger)
        except NotFound:
            return None
        except APIError:
            return {}
        return dict(resp.json().get("State") or {})

    def pid(self, cid: str, logger: logging.Logger) -> int:
        """The host pid of the running container's first process; 0 once it has exited."""
        state = self._state(cid, logger)
        return int((state or {}).get("Pid") or 0)

    def _kill(self, cid: str, name: str, logger: logging.Logger) -> None:
        try:
            self.conn.request(
                "post", f"/containers/{cid}/kill", logger, params={"signal": "SIGKILL"}
            )
            logger.info(_("podman container killed", name=name))
        except APIError as exn:
            # already exited (e.g. Slurm signalled the whole job): nothing to kill
            gone = exn.status_code == 409 or "container state improper" in _explain(exn)
            if not isinstance(exn, NotFound) and not gone:
                logger.warning(_("podman kill failed", name=name, error=_explain(exn)))

    def remove(self, cid: str, name: str, logger: logging.Logger, running: bool) -> None:
        """Remove the container (killing it first if it may still run); never raises."""
        try:
            if running:
                self._kill(cid, name, logger)
            self.conn.request(
                "delete",
                f"/containers/{cid}",
                logger,
                params={"force": True, "v": True, "timeout": 0},
            )
        except NotFound:
            pass
        except Exception as exn:
            logger.error(
                _(
                    "podman container removal failed; remove it with `podman rm -f NAME`",
                    name=name,
                    error=_explain(exn),
                )
            )
            return
        with self._lock:
            self._live.pop(cid, None)
        logger.debug(_("podman container removed", name=name))

    def _dead_runs(self, logger: logging.Logger) -> List[Dict[str, Any]]:
        """Containers that miniwdl processes on this host left when they died (their pid label
        names no live process); other runs' and users' containers are never listed."""
        hostname = socket.gethostname()
        try:
            resp = self.conn.request(
                "get",
                "/containers/json",
                logger,
                params={"all": True, "filters": json.dumps({"label": [LABEL_PID]})},
            )
        except APIError as exn:
            logger.warning(_("could not list leftover containers", error=_explain(exn)))
            return []
        return [
            c
            for c in resp.json() or []
            if (c.get("Labels") or {}).get(LABEL_HOST) == hostname
            and _left_by_dead_process(
                (c.get("Labels") or {}).get(LABEL_PID, ""),
                (c.get("Labels") or {}).get(LABEL_PID_STARTED, ""),
            )
        ]

    def dead_run_containers(self, logger: logging.Logger) -> List[str]:
        """Names of the containers left by dead runs (see ``reap_dead_runs``)."""
        return [str((c.get("Names") or [c["Id"][:12]])[0]) for c in self._dead_runs(logger)]

    def reap_dead_runs(self, logger: logging.Logger) -> int:
        """Remove the containers left by dead miniwdl runs on this host; how many."""
        dead = self._dead_runs(logger)
        for c in dead:
            name = (c.get("Names") or [c["Id"][:12]])[0]
            self.remove(str(c["Id"]), name, logger, running=c.get("State") == "running")
        if dead:
            notice(logger, _("removed containers left by dead miniwdl runs", count=len(dead)))
        return len(dead)

    def reap_dead_runs_soon(self, logger: logging.Logger) -> None:
        """:meth:`reap_dead_runs` in the background (close() and remove_leftovers() wait)."""
        self._remover.submit(self.reap_dead_runs, logger)

    def remove_leftovers(self, logger: logging.Logger) -> None:
        """At process exit: finish pending removals, then remove any container of this process
        still registered (best effort)."""
        self._remover.shutdown(wait=True)
        with self._lock:
            leftovers = dict(self._live)
        for cid, name in leftovers.items():
            self.remove(cid, name, logger, running=True)

    def close(self) -> None:
        """Finish pending removals (idempotent)."""
        self._remover.shutdown(wait=True)
