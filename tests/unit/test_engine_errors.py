"""Which podman-py errors the engine retries, how it words them, and how often it asks."""

from __future__ import annotations

from typing import Optional

import requests
from podman.errors import APIError

from miniwdl_podman.engine import connection, containers


def _api_error(status: Optional[int], explanation: str) -> APIError:
    response = None
    if status is not None:
        response = requests.Response()
        response.status_code = status
    return APIError("boom", response=response, explanation=explanation)


def test_transient_server_errors_are_retried() -> None:
    """500s that go away when sent again (db lock, keep-id race) are transient; others are not."""
    assert connection._is_transient(_api_error(500, "database is locked"))
    assert connection._is_transient(_api_error(500, "keep-id requires additional UIDs or GIDs"))
    assert not connection._is_transient(_api_error(500, "no such image"))
    assert not connection._is_transient(_api_error(404, "database is locked"))
    assert not connection._is_transient(_api_error(None, "database is locked"))


def test_connection_errors_are_told_apart_from_http_errors() -> None:
    """An APIError with no response is a connection failure (recover, then retry)."""
    assert connection._is_connection_error(_api_error(None, "POST operation failed"))
    assert not connection._is_connection_error(_api_error(500, "x"))


def test_explain_prefers_podmans_own_message() -> None:
    """Podman's explanation is the message users see."""
    assert (
        connection._explain(_api_error(500, "statfs /x: no such file")) == "statfs /x: no such file"
    )


def test_pid_is_dead() -> None:
    """Only a pid label with no process is a dead run's; garbage and live pids are not."""
    import os

    assert not containers._left_by_dead_process(str(os.getpid()))
    assert not containers._left_by_dead_process("not-a-pid")
    assert containers._left_by_dead_process("999999999")


def test_fast_wait_interval_is_stretched_to_the_polling_budget() -> None:
    """One waiting task is checked every wait_interval (10ms); sixteen together every 80ms."""
    from types import SimpleNamespace

    from miniwdl_podman.settings import Settings

    fake_conn = SimpleNamespace(settings=Settings())
    ctrs = containers.Containers(fake_conn)  # type: ignore[arg-type]
    try:
        ctrs._waiting = 1
        assert ctrs._fast_interval() == "10ms"
        ctrs._waiting = 16
        assert ctrs._fast_interval() == "80ms"
    finally:
        ctrs.close()
