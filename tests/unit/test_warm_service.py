"""The warm private service's bookkeeping (a stand-in process, no Podman): found and reused by
key, facts cached per service instance, left running at the end of a run."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

from miniwdl_podman.engine import services

# stands in for `podman ... system service --time=N unix://PATH`: makes the socket file, idles
FAKE = """#!/bin/sh
for last; do :; done
touch "${last#unix://}"
exec sleep 60
"""


def _fake_podman(tmp_path: Path) -> str:
    exe = tmp_path / "podman"
    exe.write_text(FAKE)
    exe.chmod(0o755)
    return str(exe)


def _answers(url: str) -> bool:
    return os.path.exists(url[len("unix://") :])


def test_a_warm_service_is_found_by_its_key_and_its_facts_cached(tmp_path: Path) -> None:
    """The second run with the same key reuses the service (no new process); another key gets
    its own; facts remembered by the first are given back while that instance runs."""
    exe = _fake_podman(tmp_path)
    base = Path(tempfile.mkdtemp(prefix="mwp-", dir="/tmp"))  # a socket path must be short
    key = services.service_key(exe, ["--log-level=info"], 600)
    assert key != services.service_key(exe, [], 600)
    first = services.WarmService(exe, str(base), ["--log-level=info"], 600, key)
    first.start(_answers, 10)
    assert not first.reused and first.cached_info() is None
    first.remember_info({"host": {}, "version": {"Version": "9"}})
    first.stop()
    first.cleanup()  # a healthy service and its directory stay for the next run
    second = services.WarmService(exe, str(base), ["--log-level=info"], 600, key)
    second.start(_answers, 10)
    assert second.reused and second.dir == first.dir
    cached = second.cached_info()
    assert cached is not None and cached["version"] == {"Version": "9"}
    record = second._record()
    os.kill(record["pid"], signal.SIGKILL)
    assert first._proc is not None
    first._proc.wait(10)  # reaped (a miniwdl that started it has exited: init reaps it)
    assert second.cached_info() is None  # facts belong to the instance, not the directory
    st = os.stat(first.dir)
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()
    shutil.rmtree(base)
