"""The warm private service's bookkeeping (a stand-in process, no Podman): found and reused by
key, facts cached per service instance, left running at the end of a run."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

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
    its own; facts remembered by the first are given back while that instance runs, and to a
    later instance only until the podman executable changes."""
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
    assert second.info_from == "this service instance"
    record = second._record()
    os.kill(record["pid"], signal.SIGKILL)
    assert first._proc is not None
    first._proc.wait(10)  # reaped (a miniwdl that started it has exited: init reaps it)
    # a new instance may take them while nothing they depend on changed; not after that
    assert second.cached_info() is not None
    assert second.info_from.startswith("an earlier service")
    st = os.stat(exe)
    os.utime(exe, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # podman upgraded
    assert second.cached_info() is None
    st = os.stat(first.dir)
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()
    shutil.rmtree(base)


def test_facts_stamps_change_with_what_info_depends_on(tmp_path: Path) -> None:
    """The stamps of a cached /info change when the OCI runtime it names is replaced, a
    binary appears beside it, or the store's root is made anew; not when files come and go in
    the store's root (Podman 5's database journal)."""
    exe = _fake_podman(tmp_path)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    runc = bindir / "runc"
    runc.write_text("1")
    graph = tmp_path / "graph"
    graph.mkdir()
    info = {"host": {"ociRuntime": {"path": str(runc)}}, "store": {"graphRoot": str(graph)}}
    before = services.facts_stamps(exe, info)
    assert services.facts_stamps(exe, info) == before
    (bindir / "crun").write_text("2")
    after_install = services.facts_stamps(exe, info)
    assert after_install != before
    runc.write_text("upgraded")
    assert services.facts_stamps(exe, info) != after_install
    now = services.facts_stamps(exe, info)
    (graph / "db.sql-wal").write_text("")  # Podman 5's database journal, there at times
    assert services.facts_stamps(exe, info) == now
    keep = tmp_path / "keep"
    keep.mkdir()
    graph.rename(keep / "graph")  # keep its inode busy: a new directory gets another
    graph.mkdir()
    assert services.facts_stamps(exe, info) != now


def test_registry_credentials_and_proxies_make_another_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with another REGISTRY_AUTH_FILE, DOCKER_CONFIG or proxy never reuses a warm
    service started without it (the service keeps what it read at its start)."""
    exe = _fake_podman(tmp_path)
    for var in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    plain = services.service_key(exe, [], 600)
    for var, value in (("REGISTRY_AUTH_FILE", "/shared/auth.json"), ("DOCKER_CONFIG", "/d"),
                       ("HTTPS_PROXY", "http://proxy:3128")):  # fmt: skip
        monkeypatch.setenv(var, value)
        assert services.service_key(exe, [], 600) != plain, var
        monkeypatch.delenv(var)
    assert services.service_key(exe, [], 600) == plain
