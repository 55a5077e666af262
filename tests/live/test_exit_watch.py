"""How a task container's end is seen, live: through a pidfd on its first process (Podman
asked only for the exit code), and through the server's wait where it cannot be watched."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from miniwdl_podman import host, settings
from miniwdl_podman.engine import Engine
from miniwdl_podman.engine.containers import Containers

from .conftest import run_in_engine

pytestmark = pytest.mark.podman

# (command, exit code): a quick exit, a failure after a pause, a command killed by a signal
CASES = [("true\n", 0), ("sleep 0.3; exit 7\n", 7), ("kill -KILL $$\n", 137)]


@pytest.fixture
def engine_run(rootless_podman: Dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    """Run commands through an in-process engine; the exit codes and how each end was seen."""
    logger = logging.getLogger(f"test-exit-watch-{uuid.uuid4().hex}")
    st = settings.Settings(network="none", coordinate=False)
    engine = Engine(st, pool_size=4)
    engine.connect(logger)

    def run(command: str) -> int:
        task_dir = tmp_path / uuid.uuid4().hex[:8]
        outcome = run_in_engine(engine, st, task_dir, command, logger)
        return int(outcome.exit.code)

    try:
        yield run
    finally:
        engine.remove_leftovers(logger)
        engine.close()


def _count_server_waits(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    waits: List[str] = []
    server_wait = Containers._wait_once

    def counted(self: Containers, cid: str) -> int:
        waits.append(cid)
        return server_wait(self, cid)

    monkeypatch.setattr(Containers, "_wait_once", counted)
    return waits


def test_exit_is_watched_without_the_servers_wait(
    engine_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit codes of quick, failing and killed commands come from the pidfd watch alone."""
    waits = _count_server_waits(monkeypatch)
    watched: List[int] = []
    namespace_init = host.ProcessWatch.namespace_init

    def recorded(pid: int) -> Any:
        watch = namespace_init(pid)
        watched.append(pid if watch is not None else -pid)
        return watch

    monkeypatch.setattr(host.ProcessWatch, "namespace_init", staticmethod(recorded))
    assert [engine_run(command) for command, _ in CASES] == [code for _, code in CASES]
    assert waits == []
    # every watch asked for was had (a command may end before its first inspect: no watch)
    assert watched and all(pid > 0 for pid in watched), watched


def test_unwatchable_process_falls_back_to_the_servers_wait(
    engine_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the first process cannot be watched, the server's wait gives the same codes."""
    waits = _count_server_waits(monkeypatch)
    monkeypatch.setattr(host.ProcessWatch, "namespace_init", staticmethod(lambda pid: None))
    assert [engine_run(command) for command, _ in CASES] == [code for _, code in CASES]
    # a command may end before its first inspect: then no watch and no wait are needed
    assert 1 <= len(waits) <= len(CASES)
