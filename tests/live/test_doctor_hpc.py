"""``doctor`` against real broken setups, and the HPC login-node behaviours, live."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from miniwdl_podman import __version__

from .conftest import BASE_IMAGE, PULL_IMAGE, Miniwdl, RunResult, foreign_owned, podman

pytestmark = pytest.mark.podman

ECHO_WDL = """
version 1.0
task t {
    input { String image }
    command <<< echo ok >>>
    output { String out = read_string(stdout()) }
    runtime { docker: image }
}
"""


def doctor(*args: str, env: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, Any]]:
    """Run `miniwdl-podman doctor --json ARGS`; (exit code, parsed report)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        ["miniwdl-podman", "doctor", "--json", *args],
        capture_output=True, text=True, env=full_env, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_doctor_judges_the_config_file_given_with_cfg(
    miniwdl: Miniwdl, rootless_podman: Dict[str, Any], tmp_path: Path
) -> None:
    """`doctor --cfg FILE` judges that file (as `miniwdl run --cfg` would use it), not the one
    MINIWDL_CFG names."""
    other = tmp_path / "other.cfg"
    other.write_text("[scheduler]\ncontainer_backend = docker_swarm\n")
    code, report = doctor("--cfg", str(miniwdl.cfg), env={"MINIWDL_CFG": str(other)})
    assert code == 0, report
    config = check(report, "miniwdl config")
    assert config["status"] == "PASS" and config["data"]["file"] == str(miniwdl.cfg)
    code, report = doctor("--cfg", str(other))
    assert check(report, "miniwdl config")["status"] == "WARN"  # it selects another backend


def check(report: Dict[str, Any], name: str) -> Dict[str, Any]:
    (found,) = [c for c in report["checks"] if c["name"] == name]
    return dict(found)


def private_containers_config(tmp_path: Path) -> Path:
    """A copy of the user's ~/.config/containers to break on purpose, via XDG_CONFIG_HOME."""
    xdg = tmp_path / "xdg-config"
    shutil.copytree(Path.home() / ".config" / "containers", xdg / "containers")
    return xdg


def test_healthy_setup_passes(miniwdl: Miniwdl, rootless_podman: Dict[str, Any]) -> None:
    """On the test bed every check passes or warns with a reason (no controllers delegated),
    the cgroups check names the version, the delegated controllers and the fix for what is
    missing, and a real test container runs with and without network."""
    code, report = doctor(env={"MINIWDL_CFG": str(miniwdl.cfg)})
    assert code == 0 and report["ok"]
    # the report names its tool, version and layout; each check has a stable id
    assert (report["tool"], report["version"], report["schema"]) == (
        "miniwdl-podman",
        __version__,
        1,
    )
    ids = [c["id"] for c in report["checks"]]
    assert len(ids) == len(set(ids)) and all(
        re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", i) for i in ids
    )
    assert {"podman", "api-service", "test-container-network-none", "cgroups"} <= set(ids)
    assert check(report, "miniwdl config")["status"] == "PASS"
    assert check(report, "test container (network none)")["status"] == "PASS"
    assert check(report, "test container (network default)")["status"] == "PASS"
    cgroups = check(report, "cgroups")
    host = rootless_podman["host"]
    assert cgroups["status"] in ("PASS", "WARN")
    assert cgroups["data"] == {
        "version": host["cgroupVersion"],
        "controllers": sorted(host.get("cgroupControllers") or []),
    }
    assert f"cgroup {host['cgroupVersion']}, controllers delegated: " in cgroups["detail"]
    if cgroups["status"] == "WARN":
        fix = "Delegate=cpu cpuset io memory pids"
        assert fix in cgroups["fix"]
        if host["cgroupVersion"] == "v1":
            assert "systemd.unified_cgroup_hierarchy=1" in cgroups["fix"]
    assert not [c for c in report["checks"] if c["status"] == "FAIL"]


def test_no_xdg_runtime_dir_is_handled(miniwdl: Miniwdl) -> None:
    """Without XDG_RUNTIME_DIR (ssh/su/cron/batch): doctor explains, and a run just works with
    a private runtime dir and service."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["MINIWDL_CFG"] = str(miniwdl.cfg)
    proc = subprocess.run(
        ["miniwdl-podman", "doctor", "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    report = json.loads(proc.stdout)
    assert check(report, "runtime dir")["status"] == "WARN"
    assert "XDG_RUNTIME_DIR is not set" in check(report, "runtime dir")["detail"]
    assert check(report, "test container (network none)")["status"] == "PASS"
    (miniwdl.tmp_path / "e.wdl").write_text(ECHO_WDL)
    res = subprocess.run(
        ["miniwdl", "run", str(miniwdl.tmp_path / "e.wdl"), f"image={BASE_IMAGE}", "--dir",
         str(miniwdl.tmp_path / "noxdg") + "/"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"/tmp/miniwdl-podman-{os.getuid()}/" in res.stderr


# an XDG_RUNTIME_DIR this user cannot make or write: what a batch job inherits from the login
# node on a compute node with no session of the user's, or what su leaves of another user's
FOREIGN_XDG = "/run/user/9999999"


def test_unwritable_xdg_runtime_dir_is_handled(miniwdl: Miniwdl) -> None:
    """With an XDG_RUNTIME_DIR the user cannot write (plain Podman fails every container with
    it), doctor warns and a run just works: Podman is started without it."""
    assert not os.path.exists(FOREIGN_XDG) and not os.access("/run/user", os.W_OK)
    env = {"XDG_RUNTIME_DIR": FOREIGN_XDG, "MINIWDL_CFG": str(miniwdl.cfg)}
    plain = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", BASE_IMAGE, "true"],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
    )  # fmt: skip
    # the trap is real: 4.x cannot make its dirs there, 5.x and 6.x cannot even read its config
    assert plain.returncode != 0
    assert "permission denied" in plain.stderr or f"lstat {FOREIGN_XDG}" in plain.stderr
    code, report = doctor(env=env)
    assert code == 0, report
    assert check(report, "runtime dir")["status"] == "WARN"
    assert "the backend runs Podman without it" in check(report, "runtime dir")["detail"]
    assert check(report, "test container (network none)")["status"] == "PASS"
    res = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env={"XDG_RUNTIME_DIR": FOREIGN_XDG})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Podman runs without it" in res.log()


def test_crun_is_fixed_on_cgroup_v1_and_right_on_v2(
    miniwdl: Miniwdl, tmp_path: Path, rootless_podman: Dict[str, Any]
) -> None:
    """crun configured: on a cgroup v1 host every container fails, doctor says so, --fix sets
    runc in a drop-in of its own (the user's containers.conf, comments and all, untouched) and
    the next miniwdl run succeeds; on a cgroup v2 host crun is right: runs succeed and doctor
    passes it, offering no fix."""
    xdg = private_containers_config(tmp_path)
    conf = xdg / "containers" / "containers.conf"
    text = re.sub(r"(?m)^#? ?runtime.*$", "", conf.read_text())
    conf.write_text(
        "# my notes: keep them\n"
        + text.replace("[engine]", '[engine]\nruntime = "crun"  # chosen by me', 1)
    )
    before = conf.read_text()
    env = {"XDG_CONFIG_HOME": str(xdg), "MINIWDL_CFG": str(miniwdl.cfg)}
    if rootless_podman["host"]["cgroupVersion"] == "v2":
        works = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env)
        assert works.returncode == 0, works.stderr[-3000:]
        assert 'runtime: "crun"' in works.log()
        code, report = doctor(env=env)
        assert code == 0, report
        runtime = check(report, "oci runtime")
        assert runtime["status"] == "PASS" and runtime["detail"].startswith("crun")
        assert runtime["action"] is None
        return
    broken = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env)
    assert "runc" in broken.clean_failure_line()
    code, report = doctor(env=env)
    assert code == 1
    runtime = check(report, "oci runtime")
    assert runtime["status"] == "FAIL" and runtime["action"] == "runtime"
    code, report = doctor("--fix", env=env)
    assert code == 0, report
    dropin = conf.parent / "containers.conf.d" / "50-miniwdl-podman.conf"
    assert any(f.startswith("fixed:") and str(dropin) in f for f in report["fixed"]), report
    assert 'runtime = "runc"' in dropin.read_text()
    assert conf.read_text() == before  # the user's own file as it was
    fixed = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env)
    assert fixed.returncode == 0, fixed.stderr[-3000:]


def test_storage_on_tmpfs_is_reported_and_moved(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """A graphroot on tmpfs is named with its real file system type; --fix moves storage to
    node-local disk and the next run (pulling its image there) succeeds."""
    xdg = private_containers_config(tmp_path)
    store = Path("/mnt/mwp-full") / uuid.uuid4().hex
    (xdg / "containers" / "storage.conf").write_text(
        f'# site notes\n[storage]\ndriver = "overlay"\ngraphroot = "{store}"  # mine\n'
        '\n[storage.options]\n# pull options\npull_options = {enable_partial_images = "false"}\n'
    )
    env = {"XDG_CONFIG_HOME": str(xdg), "MINIWDL_CFG": str(miniwdl.cfg)}
    new_root: Optional[str] = None
    try:
        _, report = doctor(env=env)
        location = check(report, "storage location")
        assert location["status"] == "WARN" and location["action"] == "storage"
        assert location["data"]["fs_types"][str(store)] == "tmpfs"
        _, report = doctor("--fix", env=env)
        storage_conf = (xdg / "containers" / "storage.conf").read_text()
        assert str(store) not in storage_conf
        # edited in place: the user's comments and other settings are still there
        assert "# site notes" in storage_conf and "# pull options" in storage_conf
        assert "enable_partial_images" in storage_conf
        new_root = check(report, "storage location")["data"]["graphroot"]
        assert check(report, "storage location")["status"] == "PASS"
        res = miniwdl.run(ECHO_WDL, f"image={PULL_IMAGE}", env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.outputs["t.out"] == "ok"
    finally:
        subprocess.run(["podman", "system", "reset", "-f"], env={**os.environ, **env},
                       capture_output=True, check=False)  # fmt: skip
        for path in (str(store), new_root):
            if path:
                subprocess.run(["podman", "unshare", "rm", "-rf", path], check=False)
        if new_root:  # the per-user parent --fix made for it, if nothing else is there
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(new_root))


def test_leftover_containers_are_found_and_removed(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """A container labelled by a dead miniwdl process is reported and --fix removes it; one of a
    live process is left alone."""
    name = f"miniwdl-leftover-{uuid.uuid4().hex[:8]}"
    live = f"miniwdl-live-{uuid.uuid4().hex[:8]}"
    labels = ["--label", f"io.github.miniwdl-podman.host={socket.gethostname()}",
              "--label", f"io.github.miniwdl-podman.task_dir={tmp_path}"]  # fmt: skip
    podman("create", "--name", name, "--label", "io.github.miniwdl-podman.pid=999999999",
           *labels, BASE_IMAGE, "true")  # fmt: skip
    podman("create", "--name", live, "--label", f"io.github.miniwdl-podman.pid={os.getpid()}",
           *labels, BASE_IMAGE, "true")  # fmt: skip
    try:
        env = {"MINIWDL_CFG": str(miniwdl.cfg)}
        _, report = doctor(env=env)
        assert check(report, "leftovers")["status"] == "WARN"
        assert name in check(report, "leftovers")["detail"]
        assert live not in check(report, "leftovers")["detail"]
        _, report = doctor("--fix", env=env)
        assert podman("container", "exists", name, check=False).returncode == 1
        assert podman("container", "exists", live, check=False).returncode == 0
        assert check(report, "leftovers")["status"] == "PASS"
    finally:
        podman("rm", "-f", "--ignore", name, live, check=False)


@pytest.mark.tun_denied
def test_unusable_tun_is_diagnosed_and_fixed(miniwdl: Miniwdl) -> None:
    """/dev/net/tun not usable (set up by `nox -s rootless`): default networking fails; doctor
    says so, --fix sets network = none in the miniwdl config, and the next run succeeds."""
    assert not os.access("/dev/net/tun", os.R_OK | os.W_OK), "run via nox -s rootless"
    env = {"MINIWDL_CFG": str(miniwdl.cfg)}
    broken = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}")
    assert "network = none" in broken.clean_failure_line()
    code, report = doctor(env=env)
    assert code == 1
    assert check(report, "network")["status"] == "FAIL"
    code, report = doctor("--fix", env=env)
    assert code == 0, report
    assert "network = none" in miniwdl.cfg.read_text()
    fixed = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}")
    assert fixed.returncode == 0, fixed.stderr[-3000:]


TIMED_WDL = """
version 1.0
workflow w {
    input { String image }
    scatter (i in range(3)) {
        call timed { input: image = image }
    }
    output { Array[String] spans = timed.span }
}
task timed {
    input { String image }
    command <<<
        start=${EPOCHREALTIME/./}
        sleep 2
        echo "$start ${EPOCHREALTIME/./}"
    >>>
    output { String span = read_string(stdout()) }
    runtime {
        docker: image
        cpu: 1
    }
}
"""


def _concurrent_runs(miniwdl: Miniwdl, env: Dict[str, str], n: int = 2) -> List[RunResult]:
    procs = [
        miniwdl.start(TIMED_WDL, f"image={BASE_IMAGE}", env=env, args=["--verbose"])
        for _ in range(n)
    ]
    results = []
    for proc, run_dir in procs:
        out, err = proc.communicate(timeout=300)
        outputs = json.loads(out)["outputs"] if proc.returncode == 0 else {}
        results.append(RunResult(proc.returncode, out, err, run_dir, outputs, None))
    return results


def _peak(spans: List[str]) -> int:
    events = []
    for span in spans:
        start, end = (int(x) for x in span.split())
        events += [(start, 1), (end, -1)]
    running = peak = 0
    for _, delta in sorted(events):
        running += delta
        peak = max(peak, running)
    return peak


def test_two_concurrent_runs_share_the_nodes_budget(miniwdl: Miniwdl) -> None:
    """Two runs of the same user on the 2-CPU node, 3 tasks of cpu=1 each: never more than 2
    tasks at once between them (from the tasks' own start/end times)."""
    results = _concurrent_runs(miniwdl, {"MINIWDL__SCHEDULER__TASK_CONCURRENCY": "3"})
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    spans = [s for r in results for s in r.outputs["w.spans"]]
    assert len(spans) == 6
    assert _peak(spans) <= 2


def test_coordination_off_switch_lets_runs_overlap(miniwdl: Miniwdl) -> None:
    """With [podman_rootless] coordinate = false each run assumes the whole node (so together
    they exceed it): the documented off switch really switches it off."""
    results = _concurrent_runs(
        miniwdl,
        {
            "MINIWDL__SCHEDULER__TASK_CONCURRENCY": "3",
            "MINIWDL__PODMAN_ROOTLESS__COORDINATE": "false",
        },
    )
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    assert _peak([s for r in results for s in r.outputs["w.spans"]]) > 2


def test_one_pull_across_concurrent_runs(miniwdl: Miniwdl) -> None:
    """Two concurrent runs needing the same absent image pull it once between them."""
    podman("rmi", "-f", PULL_IMAGE, check=False)
    procs = [
        miniwdl.start(ECHO_WDL, f"image={PULL_IMAGE}", args=["--verbose"])[0] for _ in range(2)
    ]
    logs = ""
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        logs += err
    assert logs.count("NOTICE image pulled") == 1
    assert foreign_owned(miniwdl.tmp_path) == []


def test_environment_that_does_not_fit_this_host_is_handled(miniwdl: Miniwdl) -> None:
    """TMPDIR and CONTAINERS_CONF naming nothing (a login node's, exported by sbatch): the run
    works (Podman 4.3's image look-up panics with such a TMPDIR), the log says once which
    variables Podman runs without, and doctor reports them with the fix."""
    env = {
        "TMPDIR": "/nonexistent/miniwdl-podman-tmp",
        "CONTAINERS_CONF": "/nonexistent/containers.conf",
        "MINIWDL_CFG": str(miniwdl.cfg),
    }
    res = miniwdl.run(ECHO_WDL, f"image={BASE_IMAGE}", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.log()
    assert log.count("environment variables that Podman reads name nothing usable here") == 1
    assert 'TMPDIR: "/nonexistent/miniwdl-podman-tmp (not a directory)"' in log
    assert 'CONTAINERS_CONF: "/nonexistent/containers.conf (not a file)"' in log
    code, report = doctor(env=env)
    assert code == 0, report
    found = check(report, "environment")
    assert found["status"] == "WARN"
    assert found["data"]["unusable"] == {
        "TMPDIR": "not a directory",
        "CONTAINERS_CONF": "not a file",
    }
    assert "unset CONTAINERS_CONF TMPDIR" in found["fix"]
    assert check(report, "test container (network none)")["status"] == "PASS"


def test_doctor_knows_the_slurm_backend(tmp_path: Path) -> None:
    """With podman_rootless_slurm selected, doctor says so (no 'miniwdl will not use this
    backend') and points at running it on a compute node."""
    cfg = tmp_path / "slurm.cfg"
    cfg.write_text("[scheduler]\ncontainer_backend = podman_rootless_slurm\n")
    code, report = doctor(env={"MINIWDL_CFG": str(cfg)})
    assert code == 0, report
    config = check(report, "miniwdl config")
    assert config["status"] == "PASS" and "podman_rootless_slurm" in config["detail"]
    assert "srun miniwdl-podman doctor" in config["detail"]


def test_doctor_on_a_compute_node_checks_what_the_node_helper_uses(tmp_path: Path) -> None:
    """With --node (implied inside a Slurm job), doctor runs its checks and test container
    through the node helper's private cgroupfs service on node_storage, and checks that
    node_storage is usable and node_python imports this version; a node_python without the
    package fails, naming the option."""
    store = Path(f"/tmp/mwp-node-{uuid.uuid4().hex[:8]}")
    cfg = tmp_path / "node.cfg"
    cfg.write_text(
        "[scheduler]\ncontainer_backend = podman_rootless_slurm\n"
        f"[podman_rootless_slurm]\nnode_storage = {store}\n"
    )
    try:
        code, report = doctor("--node", "--image", PULL_IMAGE, env={"MINIWDL_CFG": str(cfg)})
        assert code == 0, report
        assert "as a compute node" in check(report, "miniwdl config")["detail"]
        node_storage = check(report, "node storage")
        assert node_storage["status"] == "PASS" and node_storage["data"]["path"] == str(store)
        python = check(report, "node python")
        assert python["status"] == "PASS" and python["data"]["version"] == __version__
        assert "private" in check(report, "api service")["detail"]
        assert check(report, "storage location")["data"]["graphroot"] == str(store / "root")
        assert check(report, "test container (network none)")["status"] == "PASS"
        broken = tmp_path / "broken.cfg"
        broken.write_text(cfg.read_text() + "node_python = /bin/false\n")
        code, report = doctor("--node", "--image", PULL_IMAGE, env={"MINIWDL_CFG": str(broken)})
        assert code == 1
        python = check(report, "node python")
        assert python["status"] == "FAIL" and "cannot import miniwdl_podman" in python["detail"]
        assert "node_python" in python["fix"]
        # a store whose run root Podman would refuse (over 50 characters) is named up front
        deep = tmp_path / "a-directory-name-that-makes-the-path-long" / "%%u-%%j"  # file: %%
        long_cfg = tmp_path / "long.cfg"
        long_cfg.write_text(cfg.read_text().replace(str(store), str(deep)))
        code, report = doctor("--node", "--image", PULL_IMAGE, env={"MINIWDL_CFG": str(long_cfg)})
        assert code == 1
        storage = check(report, "node storage")
        assert storage["status"] == "FAIL" and "longer than the 50 characters" in storage["detail"]
        assert "node_storage" in storage["fix"]
    finally:
        subprocess.run(["podman", "unshare", "rm", "-rf", str(store)], timeout=120)
