"""Faults, interruption and load, live: every case ends with nothing of the run left behind
(the ``miniwdl`` fixture asserts no container remains), inputs unchanged, outputs the user's."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, List

import pytest

from .conftest import (
    BASE_IMAGE,
    INDEXED_SCATTER_WDL,
    PULL_IMAGE,
    REGISTRY,
    Miniwdl,
    RegistryRelay,
    containers_under,
    foreign_owned,
    podman,
    snapshot,
)

pytestmark = pytest.mark.podman

SLEEPY_WDL = """
version 1.0
workflow w {
    input {
        Int n
        Int fail_after = -1
        String image
    }
    scatter (i in range(n)) {
        call sleepy { input: i = i, fail_after = fail_after, image = image }
    }
}
task sleepy {
    input {
        Int i
        Int fail_after
        String image
    }
    command <<<
        if [ ~{i} -eq 0 ] && [ ~{fail_after} -ge 0 ]; then sleep ~{fail_after}; exit 1; fi
        sleep 120
    >>>
    runtime { docker: image }
}
"""


def _wait_for(cond: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _running(tmp_path: Path) -> List[str]:
    out = podman("ps", "--format", "{{.Names}}").stdout.split()
    return [n for n in containers_under(tmp_path) if n in out]


def _log(run_dir: Path) -> str:
    return next(run_dir.glob("*/workflow.log")).read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_kills_and_removes_running_containers(
    miniwdl: Miniwdl, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGINT/SIGTERM to miniwdl kills (not stops) every running task container and removes it;
    the run reports the interruption as miniwdl does."""
    proc, run_dir = miniwdl.start(SLEEPY_WDL, "n=2", f"image={BASE_IMAGE}", args=["--verbose"])
    try:
        _wait_for(lambda: len(_running(tmp_path)) == 2, what="2 running task containers")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "Traceback" not in stderr
    log = _log(run_dir)
    assert log.count("podman container killed") >= 2
    assert "Terminated" in stderr or "terminat" in stderr.lower()
    assert containers_under(tmp_path) == []


def test_fail_fast_stops_running_siblings(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """One failing task (fail_fast) kills its running siblings' containers and removes them."""
    res = miniwdl.run(SLEEPY_WDL, "n=3", "fail_after=2", f"image={BASE_IMAGE}", args=["--verbose"])
    assert res.error is not None
    assert res.error["cause"]["exit_status"] == 1
    assert res.log().count("podman container killed") >= 1


def test_containers_of_a_sigkilled_run_are_reaped_by_the_next(
    miniwdl: Miniwdl, tmp_path: Path
) -> None:
    """After miniwdl is SIGKILLed, its container survives; the next run on the host removes it
    (its pid label names a dead process) and says so."""
    proc, _ = miniwdl.start(SLEEPY_WDL, "n=1", f"image={BASE_IMAGE}", args=["--verbose"])
    try:
        _wait_for(lambda: len(_running(tmp_path)) == 1, what="the task container")
    finally:
        proc.kill()
        proc.wait()
    orphans = containers_under(tmp_path)
    assert len(orphans) == 1
    res = miniwdl.run(
        "version 1.0\ntask t { input { String image } command <<< true >>>"
        " runtime { docker: image } }",
        f"image={BASE_IMAGE}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "removed containers left by dead miniwdl runs :: count: 1" in res.stderr
    assert podman("container", "exists", orphans[0], check=False).returncode == 1


def _service_pids(marker: str) -> List[int]:
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [
        int(ln.split()[0])
        for ln in ps.splitlines()
        if marker in ln and "system service" in ln and not ln.split()[1].endswith("sh")
    ]


FINISH_WDL = """
version 1.0
task finish {
    input {
        String image
        Int secs = 5
    }
    command <<< sleep ~{secs}; echo "finished"; exit 4 >>>
    output { String out = read_string(stdout()) }
    runtime {
        docker: image
        returnCodes: 4
    }
}
"""


def test_private_service_killed_mid_task_is_restarted_and_result_kept(
    miniwdl: Miniwdl, tmp_path: Path, short_dir: Path
) -> None:
    """The private API service dies mid-task: it is restarted, the backend waits on the same
    container again, and the task's real exit status (4, allowed) and output are kept."""
    env = {
        "MINIWDL__PODMAN_ROOTLESS__SERVICE": "private",
        "MINIWDL__PODMAN_ROOTLESS__RUNTIME_DIR": str(short_dir),
    }
    proc, run_dir = miniwdl.start(FINISH_WDL, f"image={BASE_IMAGE}", env=env, args=["--verbose"])
    try:
        _wait_for(lambda: len(_running(tmp_path)) == 1, what="the task container")
        pids = _service_pids(str(short_dir))
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert '"finish.out": "finished"' in stdout
    log = next(run_dir.glob("*/task.log")).read_text()
    assert "private podman service died; restarting it" in log
    assert "exit_code: 4" in log


def test_external_service_restarted_mid_task_is_waited_for(
    miniwdl: Miniwdl, tmp_path: Path, short_dir: Path
) -> None:
    """The user's own API service restarts mid-task: the backend waits for it to come back on the
    same socket and gets the container's real exit status."""
    xdg = short_dir / "xdg"
    (xdg / "podman").mkdir(parents=True)
    sock = xdg / "podman" / "podman.sock"

    def serve() -> subprocess.Popen[bytes]:
        svc = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{sock}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        _wait_for(sock.exists, what="the service socket")
        return svc

    svc = serve()
    env = {"XDG_RUNTIME_DIR": str(xdg), "MINIWDL__PODMAN_ROOTLESS__SERVICE": "external"}
    proc, run_dir = miniwdl.start(
        FINISH_WDL, f"image={BASE_IMAGE}", "secs=6", env=env, args=["--verbose"]
    )
    try:
        _wait_for(lambda: len(_running(tmp_path)) == 1, what="the task container")
        svc.kill()
        svc.wait()
        sock.unlink()
        time.sleep(1)
        svc = serve()
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        svc.terminate()
        svc.wait(30)
    assert proc.returncode == 0, stderr[-3000:]
    assert '"finish.out": "finished"' in stdout
    log = next(run_dir.glob("*/task.log")).read_text()
    assert "podman service not answering; waiting for it to come back" in log


def test_container_removed_mid_task_is_interrupted_and_retried(
    miniwdl: Miniwdl, tmp_path: Path
) -> None:
    """A task container removed behind the backend's back fails the attempt as Interrupted
    (retryable), not as the command's exit status; with preemptible: 1 the retry succeeds."""
    wdl = """
version 1.1
task victim {
    input {
        File mode
        String image
    }
    command <<<
        if [ "$(cat '~{mode}')" = "sleep" ]; then sleep 120; fi
        echo "retried"
    >>>
    output { String out = read_string(stdout()) }
    runtime {
        docker: image
        preemptible: 1
    }
}
"""
    mode = tmp_path / "mode.txt"
    mode.write_text("sleep")
    proc, run_dir = miniwdl.start(wdl, f"image={BASE_IMAGE}", f"mode={mode}", args=["--verbose"])
    try:
        _wait_for(lambda: len(_running(tmp_path)) == 1, what="the task container")
        with open(mode, "w") as f:  # same inode: the retry's mount sees it
            f.write("go")
        podman("rm", "-f", "-t", "0", _running(tmp_path)[0])
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert '"victim.out": "retried"' in stdout
    log = next(run_dir.glob("2*/task.log")).read_text()
    assert "was removed while the task ran" in log
    assert "Interrupted" in log


def test_64_concurrent_tasks_one_pull_no_errors(miniwdl: Miniwdl) -> None:
    """64 tasks at task_concurrency 64: one pull, no 'database is locked', no connection-pool
    warnings, every task's right output."""
    podman("rmi", "-f", PULL_IMAGE, check=False)
    res = miniwdl.run(
        INDEXED_SCATTER_WDL,
        "n=64",
        f"image={PULL_IMAGE}",
        env={"MINIWDL__SCHEDULER__TASK_CONCURRENCY": "64"},
        args=["--verbose"],
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["w.got"] == list(range(64))
    log = res.log()
    assert log.count("NOTICE image pulled") == 1
    for bad in ("database is locked", "Connection pool is full", "retrying"):
        assert bad not in log and bad not in res.stderr, bad


def test_16_tasks_writing_10000_files_each(miniwdl: Miniwdl) -> None:
    """16 concurrent tasks each writing 10,000 small files: all there, all the user's."""
    wdl = """
version 1.0
workflow w {
    input { String image }
    scatter (i in range(16)) {
        call t { input: image = image }
    }
    output { Array[Int] counts = t.n }
}
task t {
    input { String image }
    command <<<
        set -e
        mkdir -p files
        for d in $(seq 0 99); do
            mkdir files/$d
            for f in $(seq 0 99); do echo $f > files/$d/$f; done
        done
        find files -type f | wc -l
    >>>
    output { Int n = read_int(stdout()) }
    runtime { docker: image }
}
"""
    res = miniwdl.run(
        wdl, f"image={BASE_IMAGE}", env={"MINIWDL__SCHEDULER__TASK_CONCURRENCY": "16"}
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["w.counts"] == [10000] * 16
    assert foreign_owned(res.run_dir) == []


ECHO_WDL = """
version 1.0
task t {
    input {
        String image
        File? f
    }
    command <<< echo ok ~{if defined(f) then "$(cat '" + f + "')" else ""} >>>
    output { String out = read_string(stdout()) }
    runtime { docker: image }
}
"""


def test_unreachable_registry_fails_with_one_line(miniwdl: Miniwdl) -> None:
    """An image on a registry nothing answers for: one line naming it and the connection error."""
    image = f"127.0.0.1:5999/miniwdl-podman-test/absent-{uuid.uuid4().hex[:8]}:1"
    res = miniwdl.run(ECHO_WDL, f"image={image}")
    last = res.clean_failure_line()
    assert f"cannot pull container image {image}" in last
    assert "connection refused" in last


def test_input_vanishing_before_its_task_fails_naming_it(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """An input deleted after the run started but before its task: one line naming the path."""
    victim = tmp_path / "victim.txt"
    victim.write_text("here\n")
    wdl = """
version 1.0
workflow w {
    input {
        File f
        String image
    }
    call wait_a_bit { input: image = image }
    call t { input: f = f, image = image, after = wait_a_bit.done }
}
task wait_a_bit {
    input { String image }
    command <<< sleep 3 >>>
    output { Boolean done = true }
    runtime { docker: image }
}
task t {
    input {
        File f
        String image
        Boolean after
    }
    command <<< cat "~{f}" >>>
    runtime { docker: image }
}
"""
    proc, _ = miniwdl.start(wdl, f"f={victim}", f"image={BASE_IMAGE}")
    try:
        _wait_for(lambda: len(_running(tmp_path)) == 1, what="the first task")
        victim.unlink()
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    # miniwdl itself checks its inputs when a task is set up; the backend checks again right
    # before the container is created (for a path deleted in between)
    assert f"input path not found: {victim}" in last


def test_invalid_shell_command_fails_as_command_failure(miniwdl: Miniwdl) -> None:
    """A command that is not valid shell fails like any command: CommandFailed with its stderr."""
    wdl = """
version 1.0
task t {
    input { String image }
    command <<< if then fi ( >>>
    runtime { docker: image }
}
"""
    res = miniwdl.run(wdl, f"image={BASE_IMAGE}")
    assert res.error is not None and res.error["cause"]["error"] == "CommandFailed"
    assert res.error["cause"]["exit_status"] == 2
    assert "syntax error" in Path(res.error["cause"]["stderr_file"]).read_text()


def test_gigabyte_of_stderr_is_survived(miniwdl: Miniwdl) -> None:
    """A task writing 1 GiB to stderr succeeds and its stderr.txt holds all of it."""
    wdl = """
version 1.0
task t {
    input { String image }
    command <<< head -c 1073741824 /dev/zero | tr '\\0' 'x' | fold -w 1023 >&2; echo done >>>
    output { String out = read_string(stdout()) }
    runtime { docker: image }
}
"""
    res = miniwdl.run(wdl, f"image={BASE_IMAGE}")
    try:
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.outputs["t.out"] == "done"
        (stderr_txt,) = [p for p in res.run_dir.glob("*/stderr.txt") if p.parent.name != "_LAST"]
        assert stderr_txt.stat().st_size >= 1 << 30
    finally:
        for p in res.run_dir.glob("2*/stderr.txt"):
            p.unlink()


def test_full_filesystem_fails_cleanly_and_says_so(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """A work dir on a full file system (8 MiB tmpfs): the task fails as CommandFailed and the
    log says the disk is full; nothing is left behind."""
    run_dir = Path("/mnt/mwp-full") / uuid.uuid4().hex
    wdl = """
version 1.0
task t {
    input { String image }
    command <<< head -c 16777216 /dev/zero > big.bin >>>
    output { File big = "big.bin" }
    runtime { docker: image }
}
"""
    (tmp_path / "full.wdl").write_text(wdl)
    env = dict(os.environ)
    env["MINIWDL_CFG"] = str(miniwdl.cfg)
    try:
        proc = subprocess.run(
            ["miniwdl", "run", str(tmp_path / "full.wdl"), f"image={BASE_IMAGE}",
             "--dir", str(run_dir) + "/", "--verbose"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        # miniwdl's CLI itself then fails to write its error files on the full disk (with a
        # traceback of its own); the backend's part is the explanation and a clean container
        assert proc.returncode != 0
        assert "task command failed with exit status 1" in proc.stderr
        assert "the task ran out of disk space" in proc.stderr
        assert containers_under(run_dir) == []
    finally:
        subprocess.run(["rm", "-rf", str(run_dir)], check=False)


def test_read_only_run_dir_fails_cleanly(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """A run directory on a read-only file system fails with one line and no container."""
    wdl_path = tmp_path / "ro.wdl"
    wdl_path.write_text(ECHO_WDL)
    env = dict(os.environ)
    env["MINIWDL_CFG"] = str(miniwdl.cfg)
    proc = subprocess.run(
        ["miniwdl", "run", str(wdl_path), f"image={BASE_IMAGE}", "--dir", "/mnt/mwp-ro/run/"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    # miniwdl itself fails to create the run directory, before any backend code runs (its log
    # line carries a traceback; that is miniwdl's, out of the backend's reach)
    assert proc.returncode != 0
    assert "Read-only file system: '/mnt/mwp-ro/run'" in proc.stderr.strip().splitlines()[-1]
    assert "podman_rootless backend initialized" not in proc.stderr


def test_full_podman_storage_names_graphroot_and_fix(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """Podman's storage out of space (a 3 MiB graphroot): the pull fails with one line naming
    the graphroot and `podman system prune`."""
    store = Path("/mnt/mwp-tiny") / uuid.uuid4().hex
    # a private containers config whose storage lies on the tiny file system
    # (CONTAINERS_STORAGE_CONF does not override ~/.config/containers/storage.conf)
    xdg = tmp_path / "xdg-config"
    user_cfg = Path.home() / ".config" / "containers"
    shutil.copytree(user_cfg, xdg / "containers")
    (xdg / "containers" / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{store}/graph"\nrunroot = "{store}/run"\n'
    )
    env = {"XDG_CONFIG_HOME": str(xdg), "MINIWDL__PODMAN_ROOTLESS__SERVICE": "private"}
    try:
        res = miniwdl.run(ECHO_WDL, f"image={PULL_IMAGE}", env=env)
        last = res.clean_failure_line()
        assert "no space left on device" in last.lower()
        assert f"{store}/graph" in last
        assert "podman system prune" in last
    finally:
        subprocess.run(
            ["podman", "system", "reset", "-f"],
            env={**os.environ, "XDG_CONFIG_HOME": str(xdg)},
            capture_output=True,
            check=False,
        )
        subprocess.run(["podman", "unshare", "rm", "-rf", str(store)], check=False)


def test_inputs_unchanged_and_outputs_owned_after_faults(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """After an interrupted run, its input is unchanged and every file it left is the user's."""
    data = tmp_path / "in.txt"
    data.write_text("keep me\n")
    before = snapshot([data])
    proc, run_dir = miniwdl.start(SLEEPY_WDL, "n=2", f"image={BASE_IMAGE}", args=["--verbose"])
    try:
        _wait_for(lambda: len(_running(tmp_path)) == 2, what="2 running task containers")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert snapshot([data]) == before
    assert foreign_owned(run_dir) == []


def test_malformed_image_name_fails_with_one_line(miniwdl: Miniwdl) -> None:
    """A malformed image reference fails before any pull or container, naming the image."""
    res = miniwdl.run(ECHO_WDL, "image=Bad Image::name", args=["--verbose"])
    last = res.clean_failure_line()
    assert "invalid container image name 'Bad Image::name'" in last
    assert "pulling image" not in res.log()


RETRIED_WDL = """
version 1.0
task t {
    input { String image }
    command <<< echo ok >>>
    output { String out = read_string(stdout()) }
    runtime {
        docker: image
        maxRetries: 2
    }
}
"""


def test_registry_down_for_the_first_attempt_is_asked_again_by_the_retry(
    miniwdl: Miniwdl,
) -> None:
    """A pull that failed (registry down) is not remembered: the task's retry, paced by
    retry_wait, asks the registry again and runs once it is back."""
    host, _, port = REGISTRY.partition(":")
    image = "127.0.0.1:5001/miniwdl-podman-test/pullme:2"
    podman("rmi", "-f", image, check=False)
    relay = RegistryRelay((host, int(port)))
    proc, run_dir = miniwdl.start(
        RETRIED_WDL, f"image={image}", env={"MINIWDL__PODMAN_ROOTLESS__RETRY_WAIT": "3"}
    )
    try:

        def task_log() -> str:
            found = list(run_dir.glob("*/task.log"))
            return found[0].read_text() if found else ""

        _wait_for(lambda: "image pull failed" in task_log(), what="the first pull to fail")
        relay.start()  # the registry is back before the retry (at least 1.5 s later)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
        relay.stop()
        podman("rmi", "-f", image, check=False)
    assert proc.returncode == 0, stderr[-3000:]
    log = task_log()
    assert log.count("image pull failed") == 1
    assert re.search(r"retrying in \d+\.\d s :: attempt: 2", log), log[-3000:]
    assert "image pulled" in log
    assert json.loads(stdout)["outputs"]["t.out"] == "ok"


def test_retries_are_paced_and_a_cancel_ends_the_wait(miniwdl: Miniwdl) -> None:
    """A task failing every attempt waits retry_wait, doubling (jittered, never under half),
    before each retry; SIGINT during a long wait ends the run at once with no container left."""
    wdl = RETRIED_WDL.replace("echo ok", "exit 3")
    res = miniwdl.run(wdl, f"image={BASE_IMAGE}",
                      env={"MINIWDL__PODMAN_ROOTLESS__RETRY_WAIT": "1"})  # fmt: skip
    assert res.returncode != 0
    waits = [float(w) for w in re.findall(r"retrying in (\d+\.\d) s", res.log())]
    assert len(waits) == 2 and 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0, waits
    proc, run_dir = miniwdl.start(wdl, f"image={BASE_IMAGE}",
                                  env={"MINIWDL__PODMAN_ROOTLESS__RETRY_WAIT": "120"})  # fmt: skip
    try:
        _wait_for(lambda: any("retrying in" in p.read_text() for p in run_dir.glob("*/task.log")),
                  what="the retry wait")  # fmt: skip
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert waited < 30, waited  # not the 60-120 s of the wait


@pytest.mark.parametrize(
    ("where", "url"),
    [("MINIWDL__PODMAN_ROOTLESS__SOCKET", "tcp://127.0.0.1:1"),
     ("CONTAINER_HOST", "ssh://someone@login.example/run/user/1000/podman/podman.sock")],
)  # fmt: skip
def test_a_service_on_another_host_is_refused_with_why(
    miniwdl: Miniwdl, where: str, url: str
) -> None:
    """ssh:// and tcp:// services are refused before anything runs, naming why (in-place
    mounts, /proc sampling, podman unshare need this host) and what to use instead."""
    res = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env={where: url})
    line = res.clean_failure_line()
    assert f"the Podman API service at {url}" in line and "is not on this host" in line
    assert "unix socket" in line and "podman_rootless_slurm" in line


TRUE_WDL = (
    "version 1.0\ntask t { input { String image } command <<< true >>>"
    " runtime { docker: image cpu: 1 } }"
)


def test_a_recycled_pid_does_not_keep_a_dead_runs_reservation(miniwdl: Miniwdl) -> None:
    """A ledger entry of a dead run whose pid now belongs to another live process (this test's
    own, with another start time) holds nothing: the next run's task is not kept waiting."""
    from miniwdl_podman import budget, host

    ledger = Path(host.private_dir(os.geteuid())) / budget.LEDGER
    ledger.parent.mkdir(mode=0o700, exist_ok=True)
    dead_run = {"id": "recycled-pid", "pid": os.getpid(), "started": "1", "cpu": 1 << 16,
                "mem": 1 << 50, "gpu": 0}  # fmt: skip
    ledger.write_text(json.dumps([dead_run]))
    try:
        res = miniwdl.run(TRUE_WDL, f"image={BASE_IMAGE}", timeout=120)
    finally:
        with contextlib.suppress(OSError, ValueError):
            ledger.write_text(json.dumps([e for e in json.loads(ledger.read_text())
                                          if e.get("id") != "recycled-pid"]))  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]


def test_a_container_whose_run_pid_was_recycled_is_reaped(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """A container labelled with a pid that a later process now has (this test's own, with
    another start time) was left by a dead run: the next run removes it."""
    name = f"mwp-recycled-{uuid.uuid4().hex[:8]}"
    podman("create", "--name", name, "--network", "none",
           "--label", f"io.github.miniwdl-podman.pid={os.getpid()}",
           "--label", "io.github.miniwdl-podman.pid_started=1",
           "--label", f"io.github.miniwdl-podman.host={socket.gethostname()}",
           "--label", f"io.github.miniwdl-podman.task_dir={tmp_path}/left",
           BASE_IMAGE, "true")  # fmt: skip
    try:
        res = miniwdl.run(TRUE_WDL, f"image={BASE_IMAGE}")
        assert res.returncode == 0, res.stderr[-3000:]
        assert "removed containers left by dead miniwdl runs :: count: 1" in res.stderr
        assert podman("container", "exists", name, check=False).returncode == 1
    finally:
        podman("rm", "-f", name, check=False)
