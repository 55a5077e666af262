"""Socket discovery, private runtime dir policy and the resource scheduler."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from miniwdl_podman import budget, capacity, engine, settings
from miniwdl_podman.engine import connection, processes, services
from miniwdl_podman.errors import PodmanUnavailable


def test_socket_candidates_in_order() -> None:
    """The option wins, then CONTAINER_HOST, then $XDG_RUNTIME_DIR/podman/podman.sock."""
    s = settings.from_mapping({"socket": "/a/b.sock"})
    env = {"CONTAINER_HOST": "unix:///c.sock", "XDG_RUNTIME_DIR": "/run/user/7"}
    assert connection.candidate(s, env) == ("unix:///a/b.sock", "[podman_rootless] socket")
    s = settings.Settings()
    assert connection.candidate(s, env) == ("unix:///c.sock", "CONTAINER_HOST")
    assert connection.candidate(s, {"XDG_RUNTIME_DIR": "/run/user/7"}) == (
        "unix:///run/user/7/podman/podman.sock",
        "XDG_RUNTIME_DIR",
    )
    url, why = connection.candidate(s, {})
    assert url is None
    assert "XDG_RUNTIME_DIR is not set" in why


def test_runtime_base_prefers_private_xdg(tmp_path: Path) -> None:
    """A 0700 XDG_RUNTIME_DIR of the user's is used; an open one is not."""
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    xdg.chmod(0o700)
    assert processes.runtime_base(settings.Settings(), {"XDG_RUNTIME_DIR": str(xdg)}) == str(xdg)
    xdg.chmod(0o755)
    base = processes.runtime_base(settings.Settings(), {"XDG_RUNTIME_DIR": str(xdg)})
    assert base.endswith(f"miniwdl-podman-{os.geteuid()}")
    assert (os.stat(base).st_mode & 0o777) == 0o700


def test_podman_environ_drops_only_an_unusable_xdg_runtime_dir(tmp_path: Path) -> None:
    """Podman's environment loses XDG_RUNTIME_DIR when it is no directory (a login node's in a
    batch job) and keeps a writable one, even 0755 (the live tests cover an unwritable one)."""
    gone = str(tmp_path / "gone")
    env = {"PATH": "/usr/bin", "XDG_RUNTIME_DIR": gone}
    assert processes.podman_environ(env) == {"PATH": "/usr/bin"}
    assert processes.unusable_runtime_dir(env) == gone
    a_file = tmp_path / "file"
    a_file.write_text("")
    for bad in (str(a_file), ""):
        assert processes.podman_environ({"XDG_RUNTIME_DIR": bad}) == {}
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    kept = {"XDG_RUNTIME_DIR": str(open_dir)}
    assert processes.podman_environ(kept) == kept
    assert processes.unusable_runtime_dir(kept) is None
    assert processes.podman_environ({"PATH": "/bin"}) == {"PATH": "/bin"}


def test_runtime_dir_option_must_be_private(tmp_path: Path) -> None:
    """A configured runtime_dir that others can enter is refused with the chmod fix."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o755)
    s = settings.from_mapping({"runtime_dir": str(open_dir)})
    with pytest.raises(PodmanUnavailable) as info:
        processes.runtime_base(s, {})
    assert f"chmod 700 {open_dir}" in str(info.value)


def test_private_service_refuses_too_long_socket_path(tmp_path: Path) -> None:
    """A base dir too deep for sockaddr_un is refused before anything is created."""
    deep = tmp_path / ("x" * 100)
    deep.mkdir()
    with pytest.raises(PodmanUnavailable) as info:
        services.PrivateService("podman", str(deep))
    assert "runtime_dir" in str(info.value)
    assert list(deep.iterdir()) == []


def test_private_service_directory_is_held_by_its_owner(tmp_path: Path) -> None:
    """A private service's directory holds its owner's lock until cleanup removes both."""
    svc = services.PrivateService("podman", str(tmp_path))
    assert sorted(os.listdir(svc.dir)) == [services.OWNER_LOCK]
    assert services.sweep_abandoned(str(tmp_path)) == []
    svc.cleanup()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def short_base() -> Iterator[Path]:
    """A 0700 directory with a path short enough for the private services' sockets."""
    path = Path(tempfile.mkdtemp(prefix="mwp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_sweep_removes_only_directories_of_dead_owners(short_base: Path) -> None:
    """The sweep removes the directories (and run roots, whatever their modes) of owners killed
    by SIGKILL and an earlier version's old socketless ones; it keeps live owners', young or
    socket-holding unlocked ones, warm services' and anything else."""
    base = short_base
    live = services.PrivateService("podman", str(base))
    code = (
        "import os, sys, signal; from miniwdl_podman.engine import services;"
        " s = services.PrivateService('podman', sys.argv[1], own_run_root=True);"
        " print(s.dir, flush=True);"
        " os.kill(os.getpid(), signal.SIGKILL)"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(base)], capture_output=True,
                            text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    dead = killed.stdout.strip()
    assert os.path.exists(os.path.join(dead, services.OWNER_LOCK))
    dead_run_root = dead.replace("miniwdl-podman-", "mwp-run-")
    assert os.path.isdir(dead_run_root)
    # as Podman 6 killed while it makes a run root leaves it: a directory without search bits
    layers = os.path.join(dead_run_root, "overlay-layers")
    os.mkdir(layers)
    Path(layers, "mountpoints.lock").write_text("")
    os.chmod(layers, 0o600)
    old = time.time() - 3600

    def unlocked(name: str, age: float, socket: bool = False) -> Path:
        d = base / name
        d.mkdir(mode=0o700)
        (d / "service.log").write_text("")
        if socket:
            (d / processes.SOCKET_NAME).write_text("")
        os.utime(d, (age, age))
        return d

    stale = unlocked("miniwdl-podman-abcd1234", old)
    young = unlocked("miniwdl-podman-efgh5678", time.time())
    serving = unlocked("miniwdl-podman-ijkl9012", old, socket=True)
    warm = unlocked("miniwdl-podman-warm-0123456789ab", old)
    other = unlocked("miniwdl-podman-paths-x", old)
    removed = services.sweep_abandoned(str(base))
    assert sorted(removed) == sorted([dead, str(stale)])
    assert not os.path.exists(dead_run_root)
    left = {p.name for p in base.iterdir()}
    assert left == {os.path.basename(live.dir), young.name, serving.name, warm.name, other.name}
    live.cleanup()


def test_ping_of_nothing_is_false(tmp_path: Path) -> None:
    """ping() answers False (not an exception) when nothing listens."""
    assert engine.ping(f"unix://{tmp_path}/none.sock", timeout=1) is False


def test_pool_size_covers_one_wait_per_task() -> None:
    """The connection pool holds a blocking wait per concurrent task plus headroom."""
    assert engine.pool_size_for(64) >= 64 + 8
    assert engine.pool_size_for(1) >= 16


def _peak_running(sched: budget.Scheduler, asks: List[Tuple[int, int, bool]]) -> int:
    """How many of the reservations ``asks`` (cpu, memory, gpu) were held at once, at most."""
    active: List[int] = []
    peak: List[int] = []
    lock = threading.Lock()

    def task(cpu: int, mem: int, gpu: bool) -> None:
        with sched.reserve(cpu, mem, gpu):
            with lock:
                active.append(1)
                peak.append(len(active))
            time.sleep(0.05)
            with lock:
                active.pop()

    threads = [threading.Thread(target=task, args=ask) for ask in asks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(peak)


def test_scheduler_never_oversubscribes() -> None:
    """Reservations of 2 cpu on a 2-cpu scheduler run one at a time."""
    sched = budget.Scheduler(cpu=2, mem_bytes=1 << 30)
    assert _peak_running(sched, [(2, 1 << 20, False)] * 4) == 1


def test_scheduler_runs_gpu_tasks_one_per_gpu_slot() -> None:
    """With one GPU slot, GPU tasks run one at a time though cpu and memory would fit more."""
    sched = budget.Scheduler(cpu=8, mem_bytes=1 << 30, gpu_slots=1)
    assert _peak_running(sched, [(1, 0, True)] * 4) == 1


def test_scheduler_gpu_slots_leave_other_tasks_alone() -> None:
    """Tasks without runtime.gpu are not held back by a busy GPU slot."""
    sched = budget.Scheduler(cpu=8, mem_bytes=1 << 30, gpu_slots=1)
    assert _peak_running(sched, [(1, 0, True)] + [(1, 0, False)] * 3) == 4


def test_scheduler_without_gpu_limit_runs_gpu_tasks_together() -> None:
    """gpu_concurrency 0 (no limit): GPU tasks are scheduled by cpu and memory alone."""
    sched = budget.Scheduler(cpu=8, mem_bytes=1 << 30, gpu_slots=0)
    assert _peak_running(sched, [(1, 0, True)] * 4) == 4


def test_host_limits_are_positive() -> None:
    """Host limits report at least one CPU and some memory."""
    limits = capacity.host_capacity()
    assert limits["cpu"] >= 1
    assert limits["mem_bytes"] > 0


def test_environment_naming_nothing_is_left_out_for_podman(tmp_path: Path) -> None:
    """TMPDIR/XDG_*_HOME that are not directories and CONTAINERS_* that are not files are named
    and dropped for Podman; HOME falls back to the passwd home; what exists is kept."""
    conf = tmp_path / "containers.conf"
    conf.write_text("")
    env = {
        "PATH": "/usr/bin",
        "TMPDIR": str(tmp_path / "gone"),
        "XDG_CONFIG_HOME": str(tmp_path),
        "CONTAINERS_CONF": str(conf),
        "CONTAINERS_STORAGE_CONF": str(tmp_path / "no-storage.conf"),
        "HOME": str(tmp_path / "no-home"),
    }
    assert processes.unusable_environment(env) == {
        "TMPDIR": "not a directory",
        "HOME": "not a directory",
        "CONTAINERS_STORAGE_CONF": "not a file",
    }
    kept = processes.podman_environ(env)
    assert "TMPDIR" not in kept and "CONTAINERS_STORAGE_CONF" not in kept
    assert kept["XDG_CONFIG_HOME"] == str(tmp_path) and kept["CONTAINERS_CONF"] == str(conf)
    assert kept["HOME"] == os.path.expanduser("~" + __import__("getpass").getuser())
