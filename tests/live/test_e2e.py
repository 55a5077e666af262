"""End-to-end: real WDL through ``miniwdl run`` with podman_rootless, as an unprivileged user."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from .conftest import (
    BASE_IMAGE,
    INDEXED_SCATTER_WDL,
    OFFLINE_IMAGE,
    PULL_IMAGE,
    Miniwdl,
    containers_under,
    foreign_owned,
    podman,
    service_processes,
    snapshot,
    stop_services_under,
)

pytestmark = pytest.mark.podman

SCATTER_WDL = """
version 1.2
workflow w {
    input {
        Array[File] files
        Directory dir
        String image
    }
    scatter (f in files) {
        call count { input: f = f, dir = dir, image = image }
    }
    call merge { input: parts = count.out, image = image }
    output {
        Array[File] counts = count.out
        Array[Directory] listings = count.listing
        Array[Int] sizes = count.size
        File merged = merge.merged
        Array[File] pieces = merge.pieces
    }
}
task count {
    input {
        File f
        Directory dir
        String image
    }
    command <<<
        set -euo pipefail
        wc -c < "~{f}" | tr -d ' ' > size
        echo "$(basename "~{f}") $(cat size)" > out.txt
        mkdir -p listing/sub
        ls "~{dir}" > listing/sub/ls.txt
        echo hidden > listing/.dotfile
    >>>
    output {
        File out = "out.txt"
        Directory listing = "listing"
        Int size = read_int("size")
    }
    runtime { container: image }
}
task merge {
    input {
        Array[File] parts
        String image
    }
    command <<<
        set -euo pipefail
        cat ~{sep(" ", parts)} | sort > merged.txt
        mkdir pieces
        i=0
        while read -r line; do
            i=$((i + 1))
            echo "$line" > "pieces/piece_$i"
        done < merged.txt
    >>>
    output {
        File merged = "merged.txt"
        Array[File] pieces = glob("pieces/piece_*")
    }
    runtime { container: image }
}
"""

FAIL_WDL = """
version 1.0
task fail {
    input { String image }
    command <<<
        echo "about to fail on purpose" >&2
        exit 3
    >>>
    runtime { docker: image }
}
"""

ECHO_WDL = """
version 1.0
task echo {
    input {
        String image
        File? f
    }
    command <<<
        echo ran
        ~{if defined(f) then "cp '" + f + "' ." else ""}
    >>>
    output {
        String out = read_string(stdout())
        Array[File] copied = glob("*.txt")
    }
    runtime { docker: image }
}
"""


def _inputs(tmp_path: Path) -> tuple[list[Path], Path]:
    data = tmp_path / "data"
    (data / "dir" / "nested").mkdir(parents=True)
    files = []
    for i, text in enumerate(["alpha\n", "bravo bravo\n", "charlie charlie charlie\n"]):
        p = data / f"in{i}.txt"
        p.write_text(text)
        os.chmod(p, 0o640)
        files.append(p)
    (data / "dir" / "a.txt").write_text("a")
    (data / "dir" / "nested" / "b.txt").write_text("b")
    return files, data / "dir"


def test_scatter_with_files_and_directories_gives_right_outputs_owned_by_user(
    miniwdl: Miniwdl, tmp_path: Path
) -> None:
    """A scatter with File, Directory and Array[File] inputs/outputs gives the right values,
    owned by the invoking user, and leaves its inputs untouched."""
    files, directory = _inputs(tmp_path)
    before = snapshot([*files, directory])
    res = miniwdl.run(
        SCATTER_WDL,
        *[f"files={f}" for f in files],
        f"dir={directory}",
        f"image={BASE_IMAGE}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.outputs
    assert out["w.sizes"] == [6, 12, 24]
    assert [Path(p).read_text() for p in out["w.counts"]] == [
        "in0.txt 6\n",
        "in1.txt 12\n",
        "in2.txt 24\n",
    ]
    for listing in out["w.listings"]:
        assert (Path(listing) / "sub" / "ls.txt").read_text() == "a.txt\nnested\n"
        assert (Path(listing) / ".dotfile").read_text() == "hidden\n"
    assert Path(out["w.merged"]).read_text() == "in0.txt 6\nin1.txt 12\nin2.txt 24\n"
    assert sorted(Path(p).read_text() for p in out["w.pieces"]) == [
        "in0.txt 6\n",
        "in1.txt 12\n",
        "in2.txt 24\n",
    ]
    assert foreign_owned(res.run_dir) == []
    assert snapshot([*files, directory]) == before


def test_failing_command_fails_run_with_exit_status_and_stderr(
    miniwdl: Miniwdl, tmp_path: Path
) -> None:
    """A task exiting 3 fails the run with miniwdl's CommandFailed, exit status 3, its stderr."""
    res = miniwdl.run(FAIL_WDL, f"image={BASE_IMAGE}")
    assert res.returncode != 0
    assert res.error is not None
    assert res.error["cause"]["error"] == "CommandFailed"
    assert res.error["cause"]["exit_status"] == 3
    stderr_file = Path(res.error["cause"]["stderr_file"])
    assert stderr_file.read_text() == "about to fail on purpose\n"
    assert "Traceback" not in res.stderr
    assert foreign_owned(res.run_dir) == []


def test_path_with_colon_comma_space_round_trips(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """An input named ``a:b,c d.txt`` mounts and comes back out with its name and bytes."""
    weird_dir = tmp_path / "dir with:colon,comma=eq ünï"
    weird_dir.mkdir()
    weird = weird_dir / "a:b,c d.txt"
    weird.write_bytes(b"payload \xe2\x9c\x93\n")
    before = snapshot([weird])
    res = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", f"f={weird}")
    assert res.returncode == 0, res.stderr[-3000:]
    (copied,) = res.outputs["echo.copied"]
    assert Path(copied).name == "a:b,c d.txt"
    assert Path(copied).read_bytes() == b"payload \xe2\x9c\x93\n"
    assert snapshot([weird]) == before


def test_local_image_runs_without_contacting_registry(miniwdl: Miniwdl) -> None:
    """An image only in the local store runs although its registry (port 5999) is unreachable."""
    res = miniwdl.run(ECHO_WDL, f"image={OFFLINE_IMAGE}", args=["--verbose"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["echo.out"] == "ran"
    log = res.log()
    assert "image in local store" in log
    assert "pulling image" not in log


def test_registry_image_pulled_once_for_scatter_of_8(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """An image only in the loopback registry is pulled exactly once for a scatter of 8."""
    podman("rmi", "-f", PULL_IMAGE, check=False)
    assert podman("image", "exists", PULL_IMAGE, check=False).returncode == 1
    res = miniwdl.run(
        INDEXED_SCATTER_WDL,
        "n=8",
        f"image={PULL_IMAGE}",
        env={"MINIWDL__SCHEDULER__TASK_CONCURRENCY": "8"},
        args=["--verbose"],
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["w.got"] == list(range(8))
    logs = res.log()
    assert logs.count("NOTICE image pulled") == 1
    assert logs.count("pulling image") == 1
    assert podman("image", "exists", PULL_IMAGE, check=False).returncode == 0


def test_nonexistent_image_fails_with_one_clear_line(miniwdl: Miniwdl) -> None:
    """A nonexistent image fails the run with one line naming it and the registry's reason."""
    missing = PULL_IMAGE.replace("pullme", "does-not-exist")
    res = miniwdl.run(ECHO_WDL, f"image={missing}")
    last = res.clean_failure_line()
    assert "ERROR" in last
    assert f"cannot pull container image {missing}" in last
    assert "manifest unknown" in last


def test_wrong_socket_with_external_service_fails_clearly(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """service = external with a socket nothing serves: one line naming socket and the fix."""
    res = miniwdl.run(
        ECHO_WDL,
        f"image={BASE_IMAGE}",
        env={
            "MINIWDL__PODMAN_ROOTLESS__SERVICE": "external",
            "MINIWDL__PODMAN_ROOTLESS__SOCKET": str(tmp_path / "nothing.sock"),
        },
    )
    last = res.clean_failure_line()
    assert f"no Podman API service answers at unix://{tmp_path}/nothing.sock" in last
    assert "podman.socket" in last


def test_missing_podman_executable_fails_clearly(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """No podman executable for a private service: one line naming the option and the install."""
    res = miniwdl.run(
        ECHO_WDL,
        f"image={BASE_IMAGE}",
        env={
            "MINIWDL__PODMAN_ROOTLESS__SERVICE": "private",
            "MINIWDL__PODMAN_ROOTLESS__PODMAN": str(tmp_path / "no-such-podman"),
        },
    )
    last = res.clean_failure_line()
    assert "no-such-podman' not found" in last
    assert "apt-get install podman" in last


def test_service_that_will_not_start_fails_with_its_message(
    miniwdl: Miniwdl, tmp_path: Path, short_dir: Path
) -> None:
    """A private service that exits at once: one line with its own message, nothing left."""
    fake = tmp_path / "fake-podman"
    fake.write_text("#!/bin/sh\necho 'Error: simulated service failure' >&2\nexit 125\n")
    fake.chmod(0o755)
    runtime_dir = short_dir
    res = miniwdl.run(
        ECHO_WDL,
        f"image={BASE_IMAGE}",
        env={
            "MINIWDL__PODMAN_ROOTLESS__SERVICE": "private",
            "MINIWDL__PODMAN_ROOTLESS__PODMAN": str(fake),
            "MINIWDL__PODMAN_ROOTLESS__RUNTIME_DIR": str(runtime_dir),
        },
    )
    last = res.clean_failure_line()
    assert "exited with status" in last
    assert "simulated service failure" in last
    assert list(runtime_dir.iterdir()) == []


def test_private_service_is_stopped_and_removed_after_run(
    miniwdl: Miniwdl, short_dir: Path
) -> None:
    """With service_idle = 0, the private service a run starts is gone, with its socket
    directory, when miniwdl exits."""
    runtime_dir = short_dir
    res = miniwdl.run(
        ECHO_WDL,
        f"image={BASE_IMAGE}",
        env={
            "MINIWDL__PODMAN_ROOTLESS__SERVICE": "private",
            "MINIWDL__PODMAN_ROOTLESS__RUNTIME_DIR": str(runtime_dir),
            "MINIWDL__PODMAN_ROOTLESS__SERVICE_IDLE": "0",
        },
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'source: "private service"' in res.log()
    assert list(runtime_dir.iterdir()) == []
    assert service_processes(str(runtime_dir), wrappers=True) == []


def test_a_tag_moved_mid_run_changes_nothing_for_the_runs_later_tasks(
    miniwdl: Miniwdl, tmp_path: Path
) -> None:
    """Each task's log names the image it ran (id and digest); every task of a run runs the
    image its tag named when the run first used it, even after the tag moved to another."""
    tag = f"localhost/mwp-pin-{os.getpid()}:1"
    other = "localhost/miniwdl-podman/busybox-bash-nobody:2"
    podman("tag", BASE_IMAGE, tag)
    inspect = ["image", "inspect", "--format", "{{.Id}} {{.Digest}}"]
    base_id, base_digest = podman(*inspect, BASE_IMAGE).stdout.split()
    assert podman(*inspect, other).stdout.split()[0] != base_id
    wdl = """
version 1.0
workflow w {
    input { String image }
    scatter (i in range(3)) { call t { input: image = image } }
}
task t {
    input { String image }
    command <<< sleep 2 >>>
    runtime { docker: image }
}
"""
    try:
        proc, run_dir = miniwdl.start(
            wdl, f"image={tag}", env={"MINIWDL__SCHEDULER__TASK_CONCURRENCY": "1"}
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
            "task image" in p.read_text() for p in run_dir.glob("*/call-t-*/task.log")
        ):
            time.sleep(0.1)
        podman("tag", other, tag)  # the tag moves while the run goes on
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        found = {p.resolve() for p in run_dir.glob("*/call-t-*/task.log")}  # _LAST links too
        logs = [p.read_text() for p in sorted(found)]
        assert len(logs) == 3
        for log in logs:
            assert f'id: "{base_id[:12]}", digest: "{base_digest}"' in log, log
        assert podman(*inspect, tag).stdout.split()[0] != base_id  # it did move
    finally:
        podman("untag", tag, tag, check=False)  # that name only, whichever image has it


def _warm_env(runtime_dir: Path, idle: str = "600") -> Dict[str, str]:
    return {
        "MINIWDL__PODMAN_ROOTLESS__SERVICE": "private",
        "MINIWDL__PODMAN_ROOTLESS__RUNTIME_DIR": str(runtime_dir),
        "MINIWDL__PODMAN_ROOTLESS__SERVICE_IDLE": idle,
    }


def test_warm_service_is_reused_by_the_next_run_then_stops_when_idle(
    miniwdl: Miniwdl, short_dir: Path
) -> None:
    """A run's private service outlives it (service_idle): the next run of the user with the
    same options reuses it, with its facts cached (no /info asked again), in a
    0700 directory of the user's; once idle for service_idle it stops itself."""
    env = _warm_env(short_dir, idle="6")
    first = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert 'source: "private service (warm)"' in first.log()
    (service,) = service_processes(str(short_dir))
    (warm_dir,) = short_dir.iterdir()
    st = warm_dir.stat()
    assert st.st_uid == os.getuid() and st.st_mode & 0o777 == 0o700
    second = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env, args=["--verbose"])
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.log()
    assert 'source: "private service (warm, reused)"' in log
    assert "podman service facts cached" in log and "this service instance" in log
    assert service_processes(str(short_dir)) == [service], "the same service served both runs"
    deadline = time.monotonic() + 60
    while service_processes(str(short_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert service_processes(str(short_dir)) == [], "the idle service did not stop itself"
    third = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env)
    assert third.returncode == 0, third.stderr[-3000:]
    assert 'source: "private service (warm)"' in third.log()  # started afresh, not a stale one


def test_a_warm_service_outlives_the_directory_its_first_run_started_in(
    tmp_path: Path, short_dir: Path
) -> None:
    """The warm service does not keep the starting run's working directory: once that
    directory is removed, the next run's containers still start through the same service."""
    env = _warm_env(short_dir, idle="60")
    first_dir = tmp_path / "first"
    first_dir.mkdir()
    first = Miniwdl(first_dir).run(ECHO_WDL, f"image={BASE_IMAGE}", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    (service,) = service_processes(str(short_dir))
    assert os.readlink(f"/proc/{service[0]}/cwd") == "/"
    shutil.rmtree(first_dir)
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second = Miniwdl(second_dir).run(ECHO_WDL, f"image={BASE_IMAGE}", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert 'source: "private service (warm, reused)"' in second.log()
    assert containers_under(tmp_path) == []


def _stop_and_wait(runtime_dir: Path) -> None:
    stop_services_under(runtime_dir)
    deadline = time.monotonic() + 30
    while service_processes(str(runtime_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service_processes(str(runtime_dir)) == [], "a warm service did not stop"


def test_a_new_warm_service_reuses_the_last_ones_facts_until_podman_changes(
    miniwdl: Miniwdl, short_dir: Path, tmp_path: Path
) -> None:
    """After the warm service stopped, the next run starts a new one but does not ask it for
    /info again while nothing the answer depends on changed; once the podman executable did
    (an upgrade), it asks."""
    (tmp_path / "bin").mkdir()  # a directory of its own: a file made beside it counts too
    podman_exe = tmp_path / "bin" / "podman"
    podman_exe.write_text(f'#!/bin/sh\nexec {shutil.which("podman")} "$@"\n')
    podman_exe.chmod(0o755)
    env = {**_warm_env(short_dir), "MINIWDL__PODMAN_ROOTLESS__PODMAN": str(podman_exe)}
    first = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env, args=["--verbose"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "podman service facts cached" not in first.log()
    _stop_and_wait(short_dir)
    second = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env, args=["--verbose"])
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.log()
    assert 'source: "private service (warm)"' in log  # a new instance
    assert "podman service facts cached" in log and "an earlier service" in log
    _stop_and_wait(short_dir)
    st = podman_exe.stat()
    os.utime(podman_exe, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env, args=["--verbose"])
    assert third.returncode == 0, third.stderr[-3000:]
    assert "podman service facts cached" not in third.log()
    _stop_and_wait(short_dir)


def test_concurrent_runs_start_one_warm_service(miniwdl: Miniwdl, short_dir: Path) -> None:
    """Three runs of one user started at once share one service: the first starts it, the
    others wait on its lock and reuse it; all succeed."""
    env = _warm_env(short_dir)
    procs = [miniwdl.start(ECHO_WDL, f"image={BASE_IMAGE}", env=env) for _ in range(3)]
    for proc, _run_dir in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    assert len(service_processes(str(short_dir))) == 1
    sources = [next(run_dir.glob("*/task.log")).read_text() for _proc, run_dir in procs]
    assert sum('source: "private service (warm)"' in log for log in sources) == 1
    assert sum('source: "private service (warm, reused)"' in log for log in sources) == 2


def test_options_that_differ_get_their_own_warm_service(
    miniwdl: Miniwdl, short_dir: Path, tmp_path: Path
) -> None:
    """A run with other global podman options (service_args), after Podman's configuration
    changed (as `doctor --fix` changes it), or with other registry credentials
    (REGISTRY_AUTH_FILE), never reuses a service started before."""
    xdg = tmp_path / "xdg-config"
    shutil.copytree(Path.home() / ".config" / "containers", xdg / "containers")
    env = {**_warm_env(short_dir), "XDG_CONFIG_HOME": str(xdg)}
    assert miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env).returncode == 0
    other = {**env, "MINIWDL__PODMAN_ROOTLESS__SERVICE_ARGS": '["--log-level=warn"]'}
    res = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=other)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'source: "private service (warm)"' in res.log()
    assert len(service_processes(str(short_dir))) == 2 and len(list(short_dir.iterdir())) == 2
    conf = xdg / "containers" / "containers.conf"
    conf.write_text(conf.read_text() + "\n# changed\n")
    res = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'source: "private service (warm)"' in res.log()
    assert len(service_processes(str(short_dir))) == 3
    # other registry credentials: the service reads them at its start, so not this one
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {}}')
    res = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env={**env, "REGISTRY_AUTH_FILE": str(auth)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'source: "private service (warm)"' in res.log()
    assert len(service_processes(str(short_dir))) == 4


def test_after_a_sigkilled_run_the_next_reuses_the_service_and_reaps(
    miniwdl: Miniwdl, short_dir: Path
) -> None:
    """SIGKILL of miniwdl mid-task leaves the warm service and the task's container; the next
    run reuses the service and removes the dead run's container."""
    env = _warm_env(short_dir)
    wdl = """
version 1.0
task sleepy {
    input { String image }
    command <<< sleep 300 >>>
    runtime { docker: image }
}
"""
    proc, _run_dir = miniwdl.start(wdl, f"image={BASE_IMAGE}", env=env, capture=False)
    try:
        deadline = time.monotonic() + 60
        while not containers_under(miniwdl.tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert containers_under(miniwdl.tmp_path), "the task's container never appeared"
    finally:
        proc.kill()
        proc.wait()
    left = containers_under(miniwdl.tmp_path)
    res = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'source: "private service (warm, reused)"' in res.log()
    # reaped in the background, finished before the run exits (its log line may come after the
    # task's log is closed)
    assert [c for c in containers_under(miniwdl.tmp_path) if c in left] == []


def test_a_warm_service_of_a_stale_namespace_is_replaced(miniwdl: Miniwdl, short_dir: Path) -> None:
    """After `podman system migrate` restarted the user's rootless pause process (new user and
    mount namespaces), a warm service still in the old ones is replaced, not reused: its
    containers would be invisible to every other Podman command."""
    env = _warm_env(short_dir)
    assert miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env).returncode == 0
    (old,) = service_processes(str(short_dir))
    podman("system", "migrate")
    res = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'source: "private service (warm)"' in res.log()
    assert old not in service_processes(str(short_dir))
    assert podman("ps", "-a").returncode == 0  # the CLI sees everything the service made


def test_a_warm_service_directory_not_private_is_refused(miniwdl: Miniwdl, short_dir: Path) -> None:
    """A warm service directory that others could enter (not 0700) is not used: one line."""
    env = _warm_env(short_dir)
    assert miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env).returncode == 0
    stop_services_under(short_dir)
    (warm_dir,) = short_dir.iterdir()
    warm_dir.chmod(0o755)
    res = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env)
    assert "must be a directory owned by you with mode 0700" in res.clean_failure_line()


def test_private_service_dies_with_sigkilled_miniwdl(
    miniwdl: Miniwdl, tmp_path: Path, short_dir: Path
) -> None:
    """With service_idle = 0, if miniwdl is SIGKILLed mid-task, its private service still
    stops (nothing stray), and the next run removes its directory."""
    runtime_dir = short_dir

    def held() -> List[Tuple[int, str]]:
        return service_processes(str(runtime_dir), wrappers=True)

    wdl = """
version 1.0
task sleepy {
    input { String image }
    command <<< sleep 30 >>>
    runtime { docker: image }
}
"""
    env = {
        "MINIWDL__PODMAN_ROOTLESS__SERVICE": "private",
        "MINIWDL__PODMAN_ROOTLESS__RUNTIME_DIR": str(runtime_dir),
        "MINIWDL__PODMAN_ROOTLESS__SERVICE_IDLE": "0",
    }
    proc, _ = miniwdl.start(wdl, f"image={BASE_IMAGE}", env=env, capture=False)
    try:
        deadline = time.monotonic() + 60
        while not held() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert held(), "private service never started"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 20
    while held() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert held() == []
    assert len(list(runtime_dir.iterdir())) == 1
    # the next run removes the killed run's directory, and its orphaned task container (issue
    # 6); in case it did not, this test removes the container itself
    res = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env, args=["--verbose"])
    for name in containers_under(tmp_path):
        podman("rm", "-f", "-t", "0", name, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "removed a killed run's private service directory" in res.log()
    assert list(runtime_dir.iterdir()) == []


def test_user_socket_is_used_when_it_answers(miniwdl: Miniwdl, short_dir: Path) -> None:
    """With a service on $XDG_RUNTIME_DIR/podman/podman.sock, the backend uses it."""
    xdg = short_dir / "xdg"
    (xdg / "podman").mkdir(parents=True)
    xdg.chmod(0o700)
    sock = xdg / "podman" / "podman.sock"
    svc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        res = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env={"XDG_RUNTIME_DIR": str(xdg)})
        assert res.returncode == 0, res.stderr[-3000:]
        log = res.log()
        assert f'url: "unix://{sock}"' in log
        assert 'source: "XDG_RUNTIME_DIR"' in log
    finally:
        svc.terminate()
        svc.wait(30)


def test_too_long_runtime_dir_fails_naming_the_option(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """A runtime_dir too deep for a unix socket path fails with one line naming the option."""
    deep = tmp_path / ("d" * 90)
    res = miniwdl.run(
        ECHO_WDL,
        f"image={BASE_IMAGE}",
        env={
            "MINIWDL__PODMAN_ROOTLESS__SERVICE": "private",
            "MINIWDL__PODMAN_ROOTLESS__RUNTIME_DIR": str(deep),
        },
    )
    last = res.clean_failure_line()
    assert "too long a path for a unix socket" in last
    assert "MINIWDL__PODMAN_ROOTLESS__RUNTIME_DIR" in last


def test_copy_input_files_mode_runs_with_copies(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """With [file_io] copy_input_files the task sees copies, and the original is untouched."""
    src = tmp_path / "in put.txt"
    src.write_text("original\n")
    before = snapshot([src])
    res = miniwdl.run(
        ECHO_WDL,
        f"image={BASE_IMAGE}",
        f"f={src}",
        env={"MINIWDL__FILE_IO__COPY_INPUT_FILES": "true"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (copied,) = res.outputs["echo.copied"]
    assert Path(copied).read_text() == "original\n"
    assert snapshot([src]) == before
    assert foreign_owned(res.run_dir) == []


def test_retry_runs_in_fresh_work_dir_and_succeeds(miniwdl: Miniwdl) -> None:
    """A task failing its first attempt is retried (maxRetries) in work2/ and its output used."""
    wdl = """
version 1.2
task flaky {
    input { String image }
    command <<<
        echo "attempt ~{task.attempt}" > out.txt
        if [ ~{task.attempt} -eq 0 ]; then exit 1; fi
    >>>
    output { String out = read_string("out.txt") }
    requirements { container: image  max_retries: 1 }
}
"""
    res = miniwdl.run(wdl, f"image={BASE_IMAGE}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["flaky.out"] == "attempt 1"
    task_dir = next(res.run_dir.glob("*_flaky"))
    assert (task_dir / "work" / "out.txt").read_text() == "attempt 0\n"
    assert (task_dir / "work2" / "out.txt").read_text() == "attempt 1\n"
    assert foreign_owned(res.run_dir) == []
