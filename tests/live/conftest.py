"""Harness for live tests: real ``miniwdl run`` with the backend, against real rootless Podman.

Live tests never skip: if rootless Podman is not usable for the current user, or the test images
are missing, every live test fails with the command that fixes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

BASE_IMAGE = "localhost/miniwdl-podman/busybox-bash:2"
OFFLINE_IMAGE = "127.0.0.1:5999/miniwdl-podman-test/offline:2"
REGISTRY = os.environ.get("MINIWDL_PODMAN_TEST_REGISTRY", "127.0.0.1:5000")
PULL_IMAGE = f"{REGISTRY}/miniwdl-podman-test/pullme:2"
# the test bed's registry that wants credentials (contrib/testbed/lib.sh, registry.sh)
PRIVATE_REGISTRY = "127.0.0.1:5002"
PRIVATE_IMAGE = f"{PRIVATE_REGISTRY}/miniwdl-podman-test/private:2"
PRIVATE_USER, PRIVATE_PASSWORD = "mwp-test", "mwp-test-secret"


def private_auth_file(path: Path) -> Path:
    """An auth file at ``path`` with the private registry's credentials (``podman login
    --authfile``, as a user would make one)."""
    podman("login", "--authfile", str(path), "--tls-verify=false", "-u", PRIVATE_USER,
           "-p", PRIVATE_PASSWORD, PRIVATE_REGISTRY)  # fmt: skip
    return path


LABEL_TASK_DIR = "io.github.miniwdl-podman.task_dir"
# a scatter of n tasks each echoing its index: outputs w.got == list(range(n))
INDEXED_SCATTER_WDL = """
version 1.0
workflow w {
    input {
        Int n
        String image
    }
    scatter (i in range(n)) {
        call t { input: i = i, image = image }
    }
    output { Array[Int] got = t.got }
}
task t {
    input {
        Int i
        String image
    }
    command <<< echo ~{i} >>>
    output { Int got = read_int(stdout()) }
    runtime { docker: image }
}
"""
SETUP_HINT = (
    "prepare this machine with `sudo bash contrib/testbed/setup.sh` and run the live tests as"
    " its unprivileged user (or just run `nox -s rootless` as root)"
)


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the podman CLI as the current user (for test set-up and assertions only)."""
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=300
    )


@pytest.fixture(scope="session")
def rootless_podman() -> Dict[str, Any]:
    """Facts about the user's rootless Podman; fails (never skips) if it is not usable."""
    if os.geteuid() == 0:
        pytest.fail(f"live tests must run as an unprivileged user, not root; {SETUP_HINT}")
    try:
        info = json.loads(podman("info", "--format", "json").stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exn:
        pytest.fail(f"rootless Podman is not usable here ({exn}); {SETUP_HINT}")
    if not info["host"]["security"]["rootless"]:
        pytest.fail(f"Podman is not running rootless; {SETUP_HINT}")
    for image in (BASE_IMAGE, OFFLINE_IMAGE):
        if podman("image", "exists", image, check=False).returncode != 0:
            pytest.fail(f"test image {image} is missing; {SETUP_HINT}")
    return dict(info)


@dataclass
class RunResult:
    """What one ``miniwdl run`` did."""

    returncode: int
    stdout: str
    stderr: str
    run_dir: Path
    outputs: Dict[str, Any]
    error: Optional[Dict[str, Any]]

    def clean_failure_line(self) -> str:
        """Assert the run failed without a traceback; return its last stderr line (the error)."""
        assert self.returncode != 0, "the run should have failed"
        assert "Traceback" not in self.stderr
        return self.stderr.strip().splitlines()[-1]

    def log(self) -> str:
        """The run's whole log: its top-level workflow.log or task.log (all levels)."""
        for name in ("workflow.log", "task.log"):
            found = sorted(self.run_dir.glob(f"*/{name}"))
            if found:
                return found[-1].read_text()
        raise AssertionError(f"no log under {self.run_dir}: {self.stderr[-2000:]}")


class Miniwdl:
    """Runs ``miniwdl run`` in a subprocess with the podman_rootless backend."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.cfg = tmp_path / "miniwdl.cfg"
        self.cfg.write_text("[scheduler]\ncontainer_backend = podman_rootless\n")
        self.runs = 0

    def start(
        self,
        wdl: str,
        *inputs: str,
        env: Optional[Dict[str, str]] = None,
        args: Optional[List[str]] = None,
        capture: bool = True,
        wrapper: Sequence[str] = (),
        run_dir: Optional[Path] = None,
    ) -> Tuple[subprocess.Popen[str], Path]:
        """Launch ``miniwdl run`` in the background; (the process, its run directory).
        Without ``capture`` its output is discarded (a process nobody reads from must not
        block on a full pipe). ``wrapper``: a command that execs its arguments (miniwdl);
        ``run_dir``: the run directory (default: a new one under the test's tmp_path)."""
        self.runs += 1
        wdl_path = self.tmp_path / f"test{self.runs}.wdl"
        wdl_path.write_text(wdl)
        run_dir = run_dir or self.tmp_path / f"run{self.runs}"
        full_env = dict(os.environ)
        full_env.update(
            {
                "MINIWDL_CFG": str(self.cfg),
                "MINIWDL__SCHEDULER__CONTAINER_BACKEND": "podman_rootless",
                "MINIWDL__CALL_CACHE__GET": "false",
                "MINIWDL__CALL_CACHE__PUT": "false",
            }
        )
        full_env.update(env or {})
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        proc = subprocess.Popen(
            [
                *wrapper,
                *(sys.executable, "-m", "WDL", "run", str(wdl_path), *inputs),
                *("--dir", str(run_dir), "--error-json", *(args or [])),
            ],
            stdout=out, stderr=out, text=True, env=full_env, cwd=self.tmp_path,
        )  # fmt: skip
        return proc, run_dir

    def run(
        self,
        wdl: str,
        *inputs: str,
        env: Optional[Dict[str, str]] = None,
        args: Optional[List[str]] = None,
        timeout: float = 600,
        wrapper: Sequence[str] = (),
        run_dir: Optional[Path] = None,
    ) -> RunResult:
        proc, run_dir = self.start(
            wdl, *inputs, env=env, args=args, wrapper=wrapper, run_dir=run_dir
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        finally:
            proc.kill()
        outputs: Dict[str, Any] = {}
        error = None
        if proc.returncode == 0:
            outputs = json.loads(stdout)["outputs"]
        else:
            try:
                error = json.loads(stdout)
            except ValueError:
                error = None
        return RunResult(proc.returncode, stdout, stderr, run_dir, outputs, error)

    def run_api(
        self,
        wdl: str,
        inputs: Dict[str, Any],
        run_dir: Path,
        env: Optional[Dict[str, str]] = None,
        timeout: float = 600,
    ) -> RunResult:
        """Run through miniwdl's runtime API (``WDL.runtime.run``, what ``miniwdl run``
        calls), with ``inputs`` given as JSON (strings may hold any bytes, as Python's
        surrogates)."""
        self.runs += 1
        wdl_path = self.tmp_path / f"test{self.runs}.wdl"
        wdl_path.write_text(wdl)
        inputs_path = self.tmp_path / f"inputs{self.runs}.json"
        inputs_path.write_text(json.dumps(inputs))
        full_env = {
            **os.environ,
            "MINIWDL_CFG": str(self.cfg),
            "MINIWDL__SCHEDULER__CONTAINER_BACKEND": "podman_rootless",
            "MINIWDL__CALL_CACHE__GET": "false",
            "MINIWDL__CALL_CACHE__PUT": "false",
            **(env or {}),
        }
        proc = subprocess.run(
            [sys.executable, "-c", API_RUNNER, str(wdl_path), str(inputs_path), str(run_dir)],
            capture_output=True, text=True, errors="replace", env=full_env, cwd=self.tmp_path,
            timeout=timeout,
        )  # fmt: skip
        lines = proc.stdout.strip().splitlines()
        answer: Dict[str, Any] = json.loads(lines[-1]) if lines else {}
        error = answer if "error" in answer else None
        return RunResult(
            proc.returncode, proc.stdout, proc.stderr, run_dir, answer.get("outputs", {}), error
        )


# miniwdl's runtime API, as `miniwdl run` calls it, for runs whose command line the CLI cannot
# take: it writes its command line to the run's `rerun` file as UTF-8, so an argument (an input
# path, --dir) that is not UTF-8 makes `miniwdl run` fail after the run (a bug of miniwdl's)
API_RUNNER = """
import json, logging, sys
import WDL
from WDL.runtime import config
wdl, inputs_file, run_dir = sys.argv[1:4]
logging.basicConfig(level=logging.WARNING)
cfg = config.Loader(logging.getLogger("miniwdl-run"))
doc = WDL.load(wdl)
exe = doc.workflow or doc.tasks[0]
with open(inputs_file) as f:
    inputs = WDL.values_from_json(json.load(f), exe.available_inputs, exe.required_inputs)
try:
    rundir, outputs = WDL.runtime.run(cfg, exe, inputs, run_dir=run_dir)
except WDL.runtime.error.RunFailed as exn:
    print(json.dumps({"error": str(exn), "cause": str(exn.__cause__)}))
    sys.exit(2)
print(json.dumps({"outputs": WDL.values_to_json(outputs, namespace=exe.name), "dir": rundir}))
"""


def run_in_engine(
    engine: Any,
    st: Any,
    task_dir: Path,
    command: str,
    logger: Any,
    limits: Optional[Dict[str, int]] = None,
) -> Any:
    """Run ``command`` as one task through an in-process, connected ``Engine`` (the same path
    from plan to container that the backend takes); the task's Outcome."""
    from miniwdl_podman import identity, launch, mounts
    from miniwdl_podman import plan as plan_mod

    (task_dir / "work").mkdir(parents=True)
    paths = mounts.TaskPaths(
        container_dir="/mnt/miniwdl_task_container",
        host_work_dir=str(task_dir / "work"),
        host_stdout=str(task_dir / "stdout.txt"),
        host_stderr=str(task_dir / "stderr.txt"),
        host_command=str(task_dir / "command"),
    )
    for name in ("stdout.txt", "stderr.txt"):
        (task_dir / name).touch()
    (task_dir / "command").write_text(command)
    plan = plan_mod.TaskPlan(
        run_id=task_dir.name,
        task_dir=str(task_dir),
        try_counter=1,
        container_dir=paths.container_dir,
        mounts=mounts.task_mounts(paths, {}),
        image=BASE_IMAGE,
        network="none",
        limits=limits or {},
    )
    host = identity.host_ids(engine.info, os.geteuid(), os.getegid())
    with launch.Launcher(engine, st, host).start(plan, logger) as task:
        outcome = task.wait(None)
    assert outcome is not None
    return outcome


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mwp-", dir="/tmp"))
    yield path
    stop_services_under(path)
    shutil.rmtree(path, ignore_errors=True)


def service_processes(marker: str, wrappers: bool = False) -> List[Tuple[int, str]]:
    """(pid, command line) of the Podman API services whose command line names ``marker``;
    with ``wrappers``, also the shells that hold per-run services."""
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    found = []
    for line in ps.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        wrapper = args.startswith("/bin/sh")
        if marker in args and "system service" in args and (wrappers or not wrapper):
            found.append((int(pid), args))
    return found


def stop_services_under(path: Path) -> None:
    """Stop the warm services a test left under ``path`` (they would idle on for minutes)."""
    for pid, _args in service_processes(str(path)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


@pytest.fixture
def miniwdl(rootless_podman: Dict[str, Any], tmp_path: Path) -> Iterator[Miniwdl]:
    """A miniwdl runner; afterwards asserts the run left no container behind."""
    runner = Miniwdl(tmp_path)
    yield runner
    assert containers_under(tmp_path) == [], "containers were left behind"


def containers_under(path: Path, store: Tuple[str, ...] = ()) -> List[str]:
    """Names of containers (any state) whose task dir label lies under ``path`` (in the store
    that the global podman options ``store`` select; default: the user's)."""
    out = podman(*store, "ps", "-a", "--format", "json").stdout
    ans = []
    for c in json.loads(out or "[]"):
        task_dir = (c.get("Labels") or {}).get(LABEL_TASK_DIR, "")
        if task_dir.startswith(str(path)):
            ans.append(c["Names"][0] if c.get("Names") else c["Id"])
    return ans


def foreign_owned(root: Path) -> List[str]:
    """Every path under ``root`` (not following links) not owned by the invoking uid/gid."""
    uid, gid = os.getuid(), os.getgid()
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if st.st_uid != uid or st.st_gid != gid:
                bad.append(f"{p} ({st.st_uid}:{st.st_gid})")
    return bad


def snapshot(paths: List[Path]) -> Dict[str, Any]:
    """Bytes, mode, owner and mtime of each file under ``paths`` (to prove inputs unchanged)."""
    ans: Dict[str, Any] = {}
    for top in paths:
        walk = [top] if top.is_file() else [*sorted(top.rglob("*")), top]
        for p in walk:
            st = os.lstat(p)
            ans[str(p)] = (
                p.read_bytes() if p.is_file() else None,
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_mtime_ns,
            )
    return ans


class RegistryRelay:
    """A TCP relay from 127.0.0.1:5001 (insecure in the test bed's registries.conf.d) to the
    test bed's registry: a registry that is down until :meth:`start`."""

    def __init__(self, target: Tuple[str, int]) -> None:
        self.target = target
        self.server: Optional[socketserver.ThreadingTCPServer] = None

    def start(self) -> None:
        target = self.target

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with socket.create_connection(target) as upstream:

                    def pump(src: socket.socket, dst: socket.socket) -> None:
                        with contextlib.suppress(OSError):
                            while data := src.recv(65536):
                                dst.sendall(data)
                        with contextlib.suppress(OSError):
                            dst.shutdown(socket.SHUT_WR)

                    back = threading.Thread(target=pump, args=(upstream, self.request))
                    back.start()
                    pump(self.request, upstream)
                    back.join()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 5001), Pipe)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
