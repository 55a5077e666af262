"""Task containers: the libpod create request, start, adaptive waiting, kill, removal, reaping.

:class:`Containers` runs a :class:`~miniwdl_podman.spec.ContainerSpec`: create (the body written
by :mod:`miniwdl_podman.libpod`; Podman's create warnings, which podman-py drops, are logged),
start, wait (fast server-side polling for short tasks, slow for long ones, within a per-process
polling budget), and remove on every path (off the critical path once the container exited;
kill first when miniwdl is terminating). Containers left by dead runs on this host are found by
their labels and reaped.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import requests
from podman.errors import APIError, NotFound
from WDL._util import StructuredLogMessage as _
from WDL.runtime.error import Terminated

from .. import _backoff, libpod
from .. import host as host_mod
from .._logging import notice
from ..errors import ContainerFailed, Interrupted, PodmanUnavailable, hint_for
from ..settings import seconds
from ..spec import LABEL_HOST, LABEL_PID, LABEL_PID_STARTED, ContainerSpec
from .connection import (
    _CREATE_TRIES,
    _UNBOUNDED,
    Connection,
    _explain,
    _is_connection_error,
    _is_transient,
)

# at most this many container state checks a second, all of this process's fast waits together
_POLLS_PER_SECOND = 200


@dataclass(frozen=True)
class Exit:
    """How a task's container ended."""

    code: int
    oom_killed: bool = False


def _left_by_dead_process(pid_label: str, started_label: str = "") -> bool:
    """Whether a container's labels name a process that no longer exists here (its pid gone,
    or taken by a later process: another start time)."""
    return pid_label.isdigit() and not host_mod.pid_alive(int(pid_label), started_label)


class Containers:
    """The task containers of one process, on one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.settings = conn.settings
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._live: Dict[str, str] = {}  # container id -> name, for cleanup at exit
        self._waiting = 0  # waits in flight
        self._remover = ThreadPoolExecutor(max_workers=4, thread_name_prefix="podman-remove")

    def run(
        self,
        spec: ContainerSpec,
        logger: logging.Logger,
        terminating: Callable[[], bool],
        poll: Callable[[], None],
        running: Callable[[str], None],
        poll_period: float = 1.0,
    ) -> Exit:
        """Create, start and wait for the container; remove it on every path. ``running`` is
        called with the container id once it has started; ``poll`` every ``poll_period``
        while it runs, and once after it exits."""
        cid: Optional[str] = None
        exited = False
        try:
            cid = self.create(spec, logger)
            self._start(cid, spec, logger)
            running(cid)
            exit_code = self._wait(cid, spec, logger, terminating, poll, poll_period)
            exited = True
            if exit_code == 0:
                return Exit(0)
            # a container removed behind our back also "exits" (137, killed first): that is not
            # the command's; the removal completes just after the wait returns, so give a
            # signal-like exit a moment to show whether the container is going away
            state = self._state(cid, logger)
            deadline = time.monotonic() + (0.5 if exit_code in (137, 143) else 0.0)
            while state is not None and time.monotonic() < deadline:
                time.sleep(0.05)
                state = self._state(cid, logger)
            if state is None:
                logger.error(_("podman container disappeared while running", name=spec.name))
                raise Interrupted(
                    f"task container {spec.name} was removed while the task ran (by `podman rm`"
                    " or `podman system prune`?); its exit status is not the command's"
                )
            return Exit(exit_code, bool(state.get("OOMKilled")))
        finally:
            if cid is not None and exited:
                # off the critical path: the task's result does not depend on the removal, and
                # close()/remove_leftovers() wait for pending removals, so nothing is orphaned
                self._remover.submit(self.remove, cid, spec.name, logger, False)
            elif cid is not None:
                self.remove(cid, spec.name, logger, running=True)

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

    def _wait_once(self, cid: str) -> int:
        """Block until the container exits; its exit code. Polls fast for the first
        ``wait_fast_seconds`` (short tasks return at once), then slowly: each waiting request
        costs the service a state check per interval, for as long as the task runs."""
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

    def _fast_interval(self) -> str:
        """``wait_interval``, stretched so that all of this process's waits together ask the
        service for at most ``_POLLS_PER_SECOND`` state checks (each costs it CPU, which the
        tasks need when many run at once)."""
        base = seconds(self.settings.wait_interval)
        with self._lock:
            waiting = self._waiting
        return f"{max(base, waiting / _POLLS_PER_SECOND) * 1000:.0f}ms"

    def _wait(
        self,
        cid: str,
        spec: ContainerSpec,
        logger: logging.Logger,
        terminating: Callable[[], bool],
        poll: Callable[[], None],
        poll_period: float,
    ) -> int:
        """Wait for exit in a helper thread, polling stderr and miniwdl's termination flag."""
        outcome: Dict[str, Any] = {}
        done = threading.Event()

        def waiter() -> None:
            with self._lock:
                self._waiting += 1
            try:
                outcome["exit_code"] = self._wait_once(cid)
            except BaseException as exn:
                outcome["error"] = exn
            finally:
                with self._lock:
                    self._waiting -= 1
                done.set()

        reconnects = 0
        while True:
            done.clear()
            outcome.clear()
            threading.Thread(target=waiter, name=f"wait-{spec.name}", daemon=True).start()
            while not done.wait(poll_period):
                poll()
                if terminating():
                    self._kill(cid, spec.name, logger)
                    done.wait(10)
                    raise Terminated()
            poll()
            if "exit_code" in outcome:
                exit_code = int(outcome["exit_code"])
                if exit_code < 0:
                    raise Interrupted(
                        f"Podman could not determine how the task container {spec.name} ended"
                    )
                msg = _("podman container exited", name=spec.name, exit_code=exit_code)
                if exit_code == 0:
                    notice(logger, msg)
                else:
                    logger.error(msg)
                return exit_code
            exn = outcome["error"]
            if isinstance(exn, NotFound):
                raise Interrupted(f"task container {spec.name} disappeared while running") from None
            if _is_connection_error(exn) and reconnects < 5:
                reconnects += 1
                logger.warning(
                    _("lost the podman service while waiting; reconnecting", error=_explain(exn))
                )
                time.sleep(_backoff.delay(reconnects, 0.1, 3.0))
                self.conn.recover(logger)
                continue
            logger.error(_("podman wait failed", name=spec.name, error=_explain(exn)))
            raise Interrupted(
                f"lost track of task container {spec.name}: {_explain(exn)}"
            ) from None

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
