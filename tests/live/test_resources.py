"""Resources, live: scheduling, unenforced limits, kills, GPUs via CDI, network, inline
Dockerfiles, privileged."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from miniwdl_podman import libpod, podman_facts, settings
from miniwdl_podman.engine import INLINE_REPO, Engine

from .conftest import BASE_IMAGE, Miniwdl, foreign_owned, podman, run_in_engine

pytestmark = pytest.mark.podman

TIMED_WDL = """
version 1.0
workflow w {
    input {
        Int n
        Int cpu
        String image
        Boolean gpu = false
        Int seconds = 1
    }
    scatter (i in range(n)) {
        call timed { input: cpu = cpu, image = image, gpu = gpu, seconds = seconds }
    }
    output { Array[String] spans = timed.span }
}
task timed {
    input {
        Int cpu
        String image
        Boolean gpu
        Int seconds
    }
    command <<<
        start=${EPOCHREALTIME/./}
        sleep ~{seconds}
        echo "$start ${EPOCHREALTIME/./}"
    >>>
    output { String span = read_string(stdout()) }
    runtime {
        docker: image
        cpu: cpu
        gpu: gpu
    }
}
"""


def _max_overlap(spans: List[str]) -> int:
    events: List[Tuple[int, int]] = []
    for span in spans:
        start, end = (int(x) for x in span.split())
        events += [(start, 1), (end, -1)]
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize(("cpu", "expected_peak"), [(1, 2), (2, 1)])
def test_cpu_reservations_cap_concurrency(miniwdl: Miniwdl, cpu: int, expected_peak: int) -> None:
    """On a 2-CPU host, tasks of cpu=1 run two at a time and tasks of cpu=2 one at a time, even
    with task_concurrency 8 (measured from the tasks' own start/end times)."""
    res = miniwdl.run(
        TIMED_WDL,
        "n=4",
        f"cpu={cpu}",
        f"image={BASE_IMAGE}",
        env={"MINIWDL__SCHEDULER__TASK_CONCURRENCY": "8", "MINIWDL__TASK_RUNTIME__CPU_MAX": "2"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert _max_overlap(res.outputs["w.spans"]) == expected_peak


CAPPED_WDL = """
version 1.0
workflow w {
    input { String image }
    scatter (i in range(3)) {
        call big { input: image = image }
    }
    output { Array[String] spans = big.span }
}
task big {
    input { String image }
    command <<<
        start=${EPOCHREALTIME/./}
        sleep 1
        echo "$start ${EPOCHREALTIME/./}"
    >>>
    output { String span = read_string(stdout()) }
    runtime {
        docker: image
        cpu: 2
        memory: "8 GiB"
    }
}
"""


def _v1_hierarchy(controller: str) -> Path:
    """Where this host (or lane) mounts the cgroup v1 hierarchy of ``controller``."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _sep, right = line.partition(" - ")
        fields = right.split()
        if len(fields) >= 3 and fields[0] == "cgroup" and controller in fields[2].split(","):
            return Path(left.split()[4])
    raise AssertionError(f"no cgroup v1 {controller} hierarchy: run contrib/testbed/setup.sh")


def test_limits_on_an_ancestor_cgroup_cap_the_tasks(miniwdl: Miniwdl) -> None:
    """A CPU quota and memory limit set on an ancestor of miniwdl's cgroup (its own has none,
    as under a login node's capped user slice) cap the tasks: on this 2-CPU host, tasks asking
    for 2 CPUs and 8 GiB are adjusted to 1 CPU and 3 GiB, and run one at a time."""
    procs = []
    for controller, limit_file, expected in (
        ("cpu", "cpu.cfs_quota_us", "100000"),
        ("memory", "memory.limit_in_bytes", str(3 << 30)),
    ):
        parent = _v1_hierarchy(controller) / f"mwp-capacity-{os.getuid()}"
        assert (parent / limit_file).read_text().strip() == expected, "run setup.sh"
        procs.append(str(parent / "run" / "cgroup.procs"))
    move = 'echo $$ > "$1" && echo $$ > "$2" && shift 2 && exec "$@"'
    res = miniwdl.run(
        CAPPED_WDL,
        f"image={BASE_IMAGE}",
        # a service started in the capped cgroup must not outlive the run: later tests' tasks
        # would run under its cap
        env={
            "MINIWDL__SCHEDULER__TASK_CONCURRENCY": "8",
            "MINIWDL__PODMAN_ROOTLESS__SERVICE_IDLE": "0",
        },
        wrapper=["sh", "-c", move, "move", *procs],
    )
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.log()
    assert "runtime.cpu adjusted to host limit :: original: 2, adjusted: 1" in log
    adjusted = f"runtime.memory adjusted to host limit :: original: {8 << 30}, adjusted: {3 << 30}"
    assert adjusted in log
    assert _max_overlap(res.outputs["w.spans"]) == 1


def test_unenforceable_limits_are_reported_once_and_tasks_still_run(
    miniwdl: Miniwdl, rootless_podman: Dict[str, Any]
) -> None:
    """Where rootless Podman cannot enforce cpu/memory limits (cgroup v1; cgroup v2 without the
    controllers delegated): one warning with why and fix, and the tasks run anyway."""
    enf = podman_facts.enforcement(podman_facts.from_service(rootless_podman))
    if enf.cpu and enf.memory:
        pytest.fail("this test needs a host where rootless Podman cannot enforce limits")
    res = miniwdl.run(
        TIMED_WDL,
        "n=3",
        "cpu=1",
        f"image={BASE_IMAGE}",
        env={"MINIWDL__TASK_RUNTIME__MEMORY_LIMIT_MULTIPLIER": "1.5"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.log()
    assert log.count("limits are not enforced on this host") == 1
    if rootless_podman["host"]["cgroupVersion"] == "v1":
        assert "cgroup v1: rootless Podman cannot set resource limits" in log
        assert "systemd.unified_cgroup_hierarchy=1" in log
    else:
        assert "cgroup v2 without the cpu and memory controller delegated" in log
        assert "Delegate=cpu cpuset io memory pids" in log


def test_task_killed_by_sigkill_is_explained_with_memory(miniwdl: Miniwdl) -> None:
    """Exit status 137 fails the task with miniwdl's error plus a memory explanation."""
    wdl = """
version 1.0
task killed {
    input { String image }
    command <<< kill -KILL $$ >>>
    runtime {
        docker: image
        memory: "300 MiB"
    }
}
"""
    res = miniwdl.run(wdl, f"image={BASE_IMAGE}")
    assert res.error is not None
    assert res.error["cause"]["exit_status"] == 137
    explanation = res.error["cause"]["explanation"]
    assert "SIGKILL (exit status 137)" in explanation
    assert "runtime.memory 300.0 MiB" in explanation
    assert "SIGKILL (exit status 137)" in res.log()


def test_task_log_reports_peak_memory_and_cpu_time(miniwdl: Miniwdl) -> None:
    """A task that holds ~200 MiB and spins for 3 s has its peak memory and CPU time in the
    task log (sampled from /proc, so also on this cgroup v1 host)."""
    wdl = """
version 1.0
task hungry {
    input { String image }
    command <<<
        s=$(head -c 200000000 /dev/zero | tr '\\0' x)
        end=$((SECONDS + 3))
        while (( SECONDS < end )); do :; done
        echo ${#s}
    >>>
    output { Int n = read_int(stdout()) }
    runtime { docker: image }
}
"""
    res = miniwdl.run(wdl, f"image={BASE_IMAGE}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["hungry.n"] == 200000000
    found = re.search(
        r"task resource usage :: peak_rss_mib: ([\d.]+), cpu_seconds: ([\d.]+)", res.log()
    )
    assert found, res.log()[-3000:]
    assert float(found.group(1)) >= 190
    assert float(found.group(2)) >= 1.5


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def test_podman_create_warnings_are_logged(
    rootless_podman: Dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warning in Podman's create answer (which podman-py drops) is logged and the task still
    runs: a memory limit sent to rootless Podman on a cgroup v1 host; on cgroup v2, where
    Podman warns of less, a realtime CPU period added to the request."""
    v1 = rootless_podman["host"]["cgroupVersion"] == "v1"
    if v1:
        expected = "Resource limits are not supported and ignored on cgroups V1 rootless"
    else:
        expected = "Realtime period not supported on cgroups V2 systems"
        create_body = libpod.create_body

        def with_realtime_period(spec: Any) -> Dict[str, Any]:
            body = create_body(spec)
            body["resource_limits"] = {"cpu": {"realtimePeriod": 1000}}
            return body

        monkeypatch.setattr(libpod, "create_body", with_realtime_period)
    logger = logging.getLogger(f"test-create-warning-{uuid.uuid4().hex}")
    records = _Records()
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    st = settings.Settings(network="none", coordinate=False)
    engine = Engine(st, pool_size=4)
    engine.connect(logger)
    task_dir = tmp_path / "task"
    try:
        limits = {"memory_bytes": 64 << 20} if v1 else {}
        outcome = run_in_engine(engine, st, task_dir, "echo ran > out.txt\n", logger, limits)
    finally:
        engine.remove_leftovers(logger)
        engine.close()
    assert outcome.exit.code == 0, (task_dir / "stderr.txt").read_text()
    assert (task_dir / "work" / "out.txt").read_text() == "ran\n"
    warned = [ln for ln in records.lines if ln.startswith("WARNING podman create warning")]
    assert len(warned) == 1, records.lines
    assert expected in warned[0]


GPU_WDL = """
version 1.0
task gpu {
    input { String image }
    command <<< echo "${FAKE_GPU:-none}" >>>
    output { String got = read_string(stdout()) }
    runtime {
        docker: image
        gpu: true
    }
}
"""


def test_gpu_without_cdi_spec_fails_with_nvidia_ctk_fix(miniwdl: Miniwdl) -> None:
    """runtime.gpu with no CDI spec for nvidia.com/gpu: one line with the generate command."""
    res = miniwdl.run(GPU_WDL, f"image={BASE_IMAGE}", args=["--verbose"])
    last = res.clean_failure_line()
    assert "runtime.gpu needs the CDI device(s) nvidia.com/gpu=all" in last
    assert "nvidia-ctk cdi generate" in last
    assert "podman container created" not in res.log()


def test_gpu_task_gets_the_configured_cdi_device(miniwdl: Miniwdl) -> None:
    """runtime.gpu hands the configured CDI device to Podman, which applies its spec (the test
    bed's fake device kind sets FAKE_GPU in the container)."""
    res = miniwdl.run(
        GPU_WDL,
        f"image={BASE_IMAGE}",
        env={"MINIWDL__PODMAN_ROOTLESS__GPU_DEVICES": '["miniwdl-podman.test/fake=gpu0"]'},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["gpu.got"] == "gpu0"


@pytest.mark.parametrize(("gpu_concurrency", "expected_peak"), [("1", 1), ("0", 2)])
def test_gpu_tasks_are_held_to_gpu_concurrency(
    miniwdl: Miniwdl, gpu_concurrency: str, expected_peak: int
) -> None:
    """Two cpu=1 GPU tasks on a 2-CPU host run one at a time with gpu_concurrency 1 (each
    would get every GPU), and together with 0 (no limit)."""
    res = miniwdl.run(
        TIMED_WDL,
        "n=2",
        "cpu=1",
        "gpu=true",
        f"image={BASE_IMAGE}",
        env={
            "MINIWDL__PODMAN_ROOTLESS__GPU_DEVICES": '["miniwdl-podman.test/fake=gpu0"]',
            "MINIWDL__PODMAN_ROOTLESS__GPU_CONCURRENCY": gpu_concurrency,
            "MINIWDL__SCHEDULER__TASK_CONCURRENCY": "4",
        },
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert _max_overlap(res.outputs["w.spans"]) == expected_peak


NET_WDL = """
version 1.0
task net {
    input {
        String image
        String? network
    }
    command <<< ls /sys/class/net | sort | tr '\\n' ' ' >>>
    output { String ifaces = read_string(stdout()) }
    runtime {
        docker: image
        docker_network: select_first([network, ""])
    }
}
"""


def test_network_none_has_only_loopback(miniwdl: Miniwdl) -> None:
    """[podman_rootless] network = none: the container has no interface but lo (no route out);
    the default network has one more."""
    none = miniwdl.run(
        NET_WDL, f"image={BASE_IMAGE}", env={"MINIWDL__PODMAN_ROOTLESS__NETWORK": "none"}
    )
    assert none.returncode == 0, none.stderr[-3000:]
    assert none.outputs["net.ifaces"].split() == ["lo"]
    default = miniwdl.run(NET_WDL, f"image={BASE_IMAGE}")
    assert default.returncode == 0, default.stderr[-3000:]
    assert len(default.outputs["net.ifaces"].split()) > 1


def test_docker_network_only_when_allowed(miniwdl: Miniwdl) -> None:
    """runtime.docker_network applies only if listed in allow_networks; otherwise a warning."""
    allowed = miniwdl.run(
        NET_WDL,
        f"image={BASE_IMAGE}",
        "network=none",
        env={"MINIWDL__PODMAN_ROOTLESS__ALLOW_NETWORKS": '["none"]'},
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert allowed.outputs["net.ifaces"].split() == ["lo"]
    refused = miniwdl.run(NET_WDL, f"image={BASE_IMAGE}", "network=none")
    assert refused.returncode == 0, refused.stderr[-3000:]
    assert refused.outputs["net.ifaces"].split() != ["lo"]
    assert "runtime.docker_network ignored" in refused.log()


def test_each_rootless_network_this_podman_has_runs_tasks(
    miniwdl: Miniwdl, rootless_podman: Dict[str, Any]
) -> None:
    """Every rootless network mode this Podman offers (slirp4netns up to 5.x, pasta from 5.0)
    gives a task an interface beside lo, through runtime.docker_network."""
    facts = podman_facts.from_service(rootless_podman)
    modes = (["slirp4netns"] if facts.has_slirp4netns else []) + (
        ["pasta"] if facts.version >= (5, 0, 0) else []
    )
    assert modes, facts
    for mode in modes:
        res = miniwdl.run(
            NET_WDL,
            f"image={BASE_IMAGE}",
            f"network={mode}",
            env={"MINIWDL__PODMAN_ROOTLESS__ALLOW_NETWORKS": json.dumps(modes)},
        )
        assert res.returncode == 0, (mode, res.stderr[-3000:])
        assert len(res.outputs["net.ifaces"].split()) > 1, mode
        assert "runtime.docker_network ignored" not in res.log()
    if not facts.has_slirp4netns:  # Podman 6: asking for it fails clearly, pointing to pasta
        res = miniwdl.run(
            NET_WDL,
            f"image={BASE_IMAGE}",
            "network=slirp4netns",
            env={"MINIWDL__PODMAN_ROOTLESS__ALLOW_NETWORKS": '["slirp4netns"]'},
        )
        line = res.clean_failure_line()
        assert "has no slirp4netns" in line and "network to pasta" in line, line


INLINE_WDL = """
version 1.1
workflow w {
    input { String marker }
    scatter (i in range(3)) {
        call built { input: marker = marker }
    }
    output { Array[String] got = built.got }
}
task built {
    input { String marker }
    command <<< cat /etc/built-by-inline >>>
    output { String got = read_string(stdout()) }
    runtime {
        inlineDockerfile: [
            "FROM localhost/miniwdl-podman/busybox-bash:2",
            "RUN echo '~{marker}' > /etc/built-by-inline"
        ]
    }
}
"""


def test_inline_dockerfile_built_once_then_cached(miniwdl: Miniwdl) -> None:
    """A scatter of 3 with one inlineDockerfile builds it once; the next run reuses the image."""
    marker = f"marker-{uuid.uuid4().hex}"
    dockerfile = (
        f"FROM localhost/miniwdl-podman/busybox-bash:2\nRUN echo '{marker}' > /etc/built-by-inline"
    )
    tag = f"{INLINE_REPO}:{hashlib.sha256(dockerfile.encode()).hexdigest()[:40]}"
    try:
        first = miniwdl.run(INLINE_WDL, f"marker={marker}")
        assert first.returncode == 0, first.stderr[-3000:]
        assert first.outputs["w.got"] == [marker] * 3
        assert first.log().count("inlineDockerfile image built") == 1
        assert podman("image", "exists", tag, check=False).returncode == 0
        second = miniwdl.run(INLINE_WDL, f"marker={marker}")
        assert second.returncode == 0, second.stderr[-3000:]
        assert "inlineDockerfile image built" not in second.log()
        assert second.log().count("inlineDockerfile image cached") == 1
        assert foreign_owned(first.run_dir) == []
    finally:
        podman("rmi", "-f", tag, check=False)


def test_inline_dockerfile_failure_shows_build_log_tail(miniwdl: Miniwdl) -> None:
    """A failing build fails the task with one line carrying the build log's tail."""
    wdl = """
version 1.1
task bad {
    command <<< true >>>
    runtime {
        inlineDockerfile: [
            "FROM localhost/miniwdl-podman/busybox-bash:2",
            "RUN echo 'about to fail the build' && exit 3"
        ]
    }
}
"""
    res = miniwdl.run(wdl)
    last = res.clean_failure_line()
    assert "building the task's runtime.inlineDockerfile failed" in last
    assert "exit status 3" in last
    assert "inlineDockerfile.log" in last


PRIV_WDL = """
version 1.0
task caps {
    input { String image }
    command <<< grep CapEff /proc/self/status | cut -f2 >>>
    output { String capeff = read_string(stdout()) }
    runtime {
        docker: image
        privileged: true
    }
}
"""


def test_privileged_only_when_allowed(miniwdl: Miniwdl) -> None:
    """runtime.privileged gives all capabilities only with [task_runtime] allow_privileged."""
    plain = miniwdl.run(PRIV_WDL, f"image={BASE_IMAGE}")
    assert plain.returncode == 0, plain.stderr[-3000:]
    allowed = miniwdl.run(
        PRIV_WDL, f"image={BASE_IMAGE}", env={"MINIWDL__TASK_RUNTIME__ALLOW_PRIVILEGED": "true"}
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert int(allowed.outputs["caps.capeff"], 16) > int(plain.outputs["caps.capeff"], 16)
    assert "runtime.privileged ignored" in plain.stderr
