"""The podman_rootless_slurm backend, live: each task in its own job on the test bed's one-host
Slurm cluster, in rootless Podman on the node's own store, and Slurm's faults."""

from __future__ import annotations

import getpass
import glob
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from miniwdl_podman import slurm as slurm_mod

from .conftest import (
    BASE_IMAGE,
    INDEXED_SCATTER_WDL,
    PRIVATE_IMAGE,
    PULL_IMAGE,
    REGISTRY,
    Miniwdl,
    RunResult,
    containers_under,
    foreign_owned,
    podman,
    private_auth_file,
    snapshot,
)
from .test_doctor_hpc import FOREIGN_XDG
from .test_identity_mounts import EVERY_BYTE_WDL, check_every_byte_run, every_byte_inputs
from .test_resources import TIMED_WDL, _max_overlap
from .test_shared_store import RELAYED_IMAGE, relay, staged_images

pytestmark = [pytest.mark.podman, pytest.mark.slurm]

USER_IMAGE = f"{REGISTRY}/miniwdl-podman-test/user-app:2"
NODE_STORE = f"/tmp/miniwdl-podman-{getpass.getuser()}"
STORE_ARGS = ("--root", f"{NODE_STORE}/root", "--runroot", f"{NODE_STORE}/run")
SLEEPY_WDL = """
version 1.0
workflow w {
    input {
        Int n
        Int seconds
        String image
    }
    scatter (i in range(n)) {
        call sleepy { input: seconds = seconds, image = image }
    }
}
task sleepy {
    input {
        Int seconds
        String image
    }
    command <<< sleep ~{seconds} >>>
    runtime {
        docker: image
        preemptible: 1
    }
}
"""


def _squeue(*args: str) -> List[Dict[str, str]]:
    out = subprocess.run(
        ["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%j|%T|%k", *args],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    keys = ("id", "name", "state", "comment")
    return [
        dict(zip(keys, line.split("|", 3), strict=False))
        for line in out.splitlines()
        if line.strip()
    ]


def _wait_for(cond: Callable[[], bool], timeout: float = 90, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _files(run_dir: Path, pattern: str) -> List[Path]:
    """Files of the run's tasks matching ``pattern`` (once each, though _LAST links to them)."""
    return sorted({p.resolve() for p in run_dir.glob(f"*/call-*/{pattern}")})


def _started(run_dir: Path) -> List[Path]:
    return _files(run_dir, "slurm/try*.started")


class SlurmRun:
    """Runs miniwdl with the Slurm backend (task_concurrency 16)."""

    def __init__(self, miniwdl: Miniwdl) -> None:
        self.miniwdl = miniwdl
        self.env = {
            "MINIWDL__SCHEDULER__CONTAINER_BACKEND": "podman_rootless_slurm",
            "MINIWDL__SCHEDULER__TASK_CONCURRENCY": "16",
        }

    def run(
        self, wdl: str, *inputs: str, env: Optional[Dict[str, str]] = None, **kw: object
    ) -> RunResult:
        return self.miniwdl.run(wdl, *inputs, env={**self.env, **(env or {})}, **kw)  # type: ignore

    def start(
        self, wdl: str, *inputs: str, env: Optional[Dict[str, str]] = None, **kw: object
    ) -> Tuple[subprocess.Popen[str], Path]:
        return self.miniwdl.start(wdl, *inputs, env={**self.env, **(env or {})}, **kw)  # type: ignore


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The test bed's Slurm cluster is up (fails, never skips, otherwise)."""
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as exn:
        pytest.fail(f"no Slurm here ({exn}); run `sudo bash contrib/testbed/slurm.sh`")
    if not set(out) & {"idle", "mixed", "allocated", "planned"}:  # planned: backfill will use it
        pytest.fail(f"Slurm node not up ({out}); run `sudo bash contrib/testbed/slurm.sh`")
    return out[0]


@pytest.fixture
def slurm(slurm_cluster: str, miniwdl: Miniwdl, tmp_path: Path) -> Iterator[SlurmRun]:
    """A Slurm-backend runner; afterwards: no job of this test left, no container left in the
    node's store."""
    yield SlurmRun(miniwdl)
    _wait_for(
        lambda: not [j for j in _squeue() if str(tmp_path) in j["name"] or j["state"] in
                     ("RUNNING", "PENDING", "COMPLETING")],
        timeout=60, what="the test's Slurm jobs to end",
    )  # fmt: skip
    assert containers_under(tmp_path, STORE_ARGS) == [], "containers left in the node store"


def test_scatter_runs_as_slurm_jobs_on_the_node_store(slurm: SlurmRun) -> None:
    """A scatter runs one Slurm job per task; the node pulls the image into its own store; the
    outputs are right and every file left is the user's."""
    res = slurm.run(INDEXED_SCATTER_WDL, "n=5", f"image={PULL_IMAGE}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["w.got"] == [0, 1, 2, 3, 4]
    log = res.log()
    assert log.count("slurm job submitted") == 5
    task_logs = "".join(p.read_text() for p in _files(res.run_dir, "task.log"))
    assert task_logs.count('state: "COMPLETED"') == 5
    node_logs = _files(res.run_dir, "slurm/try1.log")
    assert len(node_logs) == 5
    assert all("podman container exited" in p.read_text() for p in node_logs)
    assert foreign_owned(res.run_dir) == []
    images = subprocess.run(
        ["podman", *STORE_ARGS, "image", "exists", PULL_IMAGE], capture_output=True
    )
    assert images.returncode == 0, "the image was not pulled into the node-local store"
    # each task's log names the image its node ran, as the node's store knows it
    digest = subprocess.run(
        ["podman", *STORE_ARGS, "image", "inspect", "--format", "{{.Digest}}", PULL_IMAGE],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert digest.startswith("sha256:")
    assert task_logs.count(f'image_digest: "{digest}"') == 5
    # each attempt's usage record, with its Slurm job, node and time in the queue
    recs = [json.loads(p.read_text()) for p in _files(res.run_dir, "usage.1.json")]
    assert len(recs) == 5
    for rec in recs:
        assert rec["backend"] == "podman_rootless_slurm" and rec["exit_code"] == 0
        assert rec["slurm"]["state"] == "COMPLETED" and rec["slurm"]["node"]
        assert rec["slurm"]["job_id"].isdigit() and rec["image_digest"] == digest
        assert rec["seconds"]["waiting"] >= 0 and rec["seconds"]["container"] > 0


def test_names_with_every_byte_on_the_node(slurm: SlurmRun, tmp_path: Path) -> None:
    """On the node as locally: inputs and a run directory named with every byte but NUL and
    "/" reach the task at their exact paths, read-only, through sbatch and the node helper."""
    f, d, run_dir = every_byte_inputs(tmp_path)
    before = snapshot([f.parent, d])
    inputs = {"f": str(f), "d": str(d), "image": PULL_IMAGE}
    res = slurm.miniwdl.run_api(EVERY_BYTE_WDL, inputs, run_dir, env=slurm.env)
    check_every_byte_run(res, run_dir)
    assert snapshot([f.parent, d]) == before


def test_identity_and_ownership_on_the_node(slurm: SlurmRun) -> None:
    """On the node as locally: a USER image runs as its user and a root image's chown'd file
    comes back owned by the invoking user; and this although the job inherits (as sbatch
    exports the environment) an XDG_RUNTIME_DIR the node has no such directory for."""
    wdl = """
version 1.0
workflow w {
    input {
        String user_image
        String root_image
    }
    call who { input: image = user_image }
    call chowner { input: image = root_image }
    output {
        String id = who.id
        File f = chowner.f
    }
}
task who {
    input { String image }
    command <<< id -u > id.txt; touch mine >>>
    output { String id = read_string("id.txt") }
    runtime { docker: image }
}
task chowner {
    input { String image }
    command <<< echo x > f; chown 1234:1234 f; mkdir d; touch d/g; chown -R 99:99 d >>>
    output { File f = "f" }
    runtime { docker: image }
}
"""
    res = slurm.run(
        wdl,
        f"user_image={USER_IMAGE}",
        f"root_image={PULL_IMAGE}",
        env={"XDG_RUNTIME_DIR": FOREIGN_XDG},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["w.id"] == "1500"
    assert foreign_owned(res.run_dir) == []
    node_logs = "".join(p.read_text() for p in _files(res.run_dir, "slurm/try1.log"))
    assert "gave them back to you" in node_logs
    assert "Podman runs without it" in node_logs


def test_tasks_are_sized_by_the_cluster_not_the_login_node(slurm: SlurmRun) -> None:
    """On a 2-CPU login node, four cpu=2 tasks run at once on the 8-CPU Slurm node (the local
    backend would run them one at a time), and a task may ask for more memory than the login
    node has."""
    # 4 s each: job starts (sbatch, slurmd, the helper's service) spread over a second or two
    res = slurm.run(
        TIMED_WDL, "n=4", "cpu=2", "seconds=4", f"image={PULL_IMAGE}", args=["--verbose"]
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert _max_overlap(res.outputs["w.spans"]) >= 3
    assert "--cpus-per-task=2" in res.log()
    big = """
version 1.0
task big {
    input { String image }
    command <<< echo ok >>>
    output { String ok = read_string(stdout()) }
    runtime {
        docker: image
        cpu: 6
        memory: "40 GiB"
    }
}
"""
    res = slurm.run(big, f"image={PULL_IMAGE}", args=["--verbose"])
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.log()
    assert "--cpus-per-task=6" in log and "--mem=40960M" in log
    assert "big.ok" in res.outputs


def test_task_memory_wins_over_a_site_memory_per_cpu_default(slurm: SlurmRun) -> None:
    """With --mem-per-cpu in extra_args (a site's default), a task with runtime.memory runs with
    its own --mem (sbatch refuses the two together) and a task without keeps the default."""
    wdl = """
version 1.0
workflow w {
    input { String image }
    call sized { input: image = image }
    call unsized { input: image = image }
    output { Array[String] ok = [sized.ok, unsized.ok] }
}
task sized {
    input { String image }
    command <<< echo ok >>>
    output { String ok = read_string(stdout()) }
    runtime {
        docker: image
        memory: "300 MiB"
    }
}
task unsized {
    input { String image }
    command <<< echo ok >>>
    output { String ok = read_string(stdout()) }
    runtime { docker: image }
}
"""
    site_default = {"MINIWDL__PODMAN_ROOTLESS_SLURM__EXTRA_ARGS": "--mem-per-cpu=256M"}
    res = slurm.run(wdl, f"image={PULL_IMAGE}", args=["--verbose"], env=site_default)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["w.ok"] == ["ok", "ok"]
    sbatch = {
        p.parent.name: next(ln for ln in p.read_text().splitlines() if "sbatch :: args" in ln)
        for p in _files(res.run_dir, "task.log")
    }
    sized, unsized = sbatch["call-sized"], sbatch["call-unsized"]
    assert '"--mem=300M"' in sized and "--mem-per-cpu" not in sized
    assert '"--mem-per-cpu=256M"' in unsized and "--mem=" not in unsized


def _fault_mid_task(
    slurm: SlurmRun,
    fault: Callable[[subprocess.Popen[str], Path], None],
    n: int = 1,
    seconds: int = 5,
) -> Tuple[int, str, Path]:
    """Run n sleepy tasks (runtime.preemptible 1); once all their jobs run, inject ``fault``;
    (miniwdl's exit status, its stderr, the run dir)."""
    proc, run_dir = slurm.start(SLEEPY_WDL, f"n={n}", f"seconds={seconds}",
                                f"image={PULL_IMAGE}", args=["--verbose"])  # fmt: skip
    try:
        _wait_for(lambda: len(_started(run_dir)) == n, what=f"{n} running jobs")
        fault(proc, run_dir)
        _, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    return proc.returncode, stderr, run_dir


def _assert_retried_after(returncode: int, stderr: str, run_dir: Path, words: str) -> None:
    """The first attempt failed for ``words`` (in a task log) and the second succeeded."""
    assert returncode == 0, stderr[-3000:]
    assert words in "".join(p.read_text() for p in _files(run_dir, "task.log"))
    assert "Interrupted" in next(run_dir.glob("*/workflow.log")).read_text()
    assert len(_files(run_dir, "slurm/try2.result")) == 1


def test_job_cancelled_by_someone_else_is_interrupted_and_retried(slurm: SlurmRun) -> None:
    """A job scancel'd behind miniwdl's back fails the attempt as Interrupted, retried under
    runtime.preemptible; the retry succeeds."""

    def scancel(_proc: subprocess.Popen[str], _run_dir: Path) -> None:
        ours = [j for j in _squeue() if j["state"] == "RUNNING" and "sleepy" in j["name"]]
        assert len(ours) == 1
        subprocess.run(["scancel", ours[0]["id"]], check=True, timeout=60)

    outcome = _fault_mid_task(slurm, scancel)
    _assert_retried_after(*outcome, "was cancelled by someone else")


def test_node_failure_is_interrupted_and_retried(slurm: SlurmRun) -> None:
    """The node going down under a running job (NODE_FAIL) fails the attempt as Interrupted,
    retried under runtime.preemptible once the node is back; the retry succeeds."""
    node = os.uname().nodename.split(".")[0]

    def scontrol(state: str) -> int:
        extra = ["reason=miniwdl-podman-test"] if state == "down" else []
        return subprocess.run(
            ["sudo", "-n", "/usr/bin/scontrol", "update", f"nodename={node}", f"state={state}",
             *extra], timeout=60,
        ).returncode  # fmt: skip

    def node_down(_proc: subprocess.Popen[str], run_dir: Path) -> None:
        assert scontrol("down") == 0
        try:
            logs = lambda: "".join(p.read_text() for p in _files(run_dir, "task.log"))  # noqa: E731
            _wait_for(lambda: "its node failed" in logs(), what="the node failure to be noticed")
        finally:
            # the test cluster's ReturnToService=2 may already have brought it back
            scontrol("resume")
            _wait_for(lambda: subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                                             text=True).stdout.strip() in ("idle", "mixed",
                                                                           "allocated"),
                      what="the node to be back")  # fmt: skip

    outcome = _fault_mid_task(slurm, node_down)
    _assert_retried_after(*outcome, "was lost: its node failed (NODE_FAIL)")


def _controller_up() -> bool:
    return subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                          timeout=60).stdout.strip() in ("idle", "mixed", "allocated")  # fmt: skip


def _slurmctld(*args: str) -> None:
    """Stop (-x), freeze (-STOP -x) or thaw (-CONT -x) slurmctld through the test bed's sudo
    rule, or start it (no args)."""
    cmd = ["/usr/bin/pkill", *args, "slurmctld"] if args else ["/usr/sbin/slurmctld"]
    subprocess.run(["sudo", "-n", *cmd], check=True, timeout=60)


def _task_logs(run_dir: Path) -> str:
    return "".join(p.read_text() for p in _files(run_dir, "task.log"))


def _jobs_of(proc: subprocess.Popen[str]) -> List[Dict[str, str]]:
    """The Slurm jobs (finished ones too) that the miniwdl process ``proc`` submitted."""
    return [
        j
        for j in _squeue("--states=all")
        if (owner := slurm_mod.parse_comment(j["comment"])) is not None and owner.pid == proc.pid
    ]


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


def test_submission_waits_out_a_controller_restart(slurm: SlurmRun) -> None:
    """A task submitted while slurmctld is down is submitted again once it is back (no error),
    and runs in exactly one job."""
    _slurmctld("-x")
    try:
        _wait_for(lambda: subprocess.run(["pgrep", "-x", "slurmctld"]).returncode != 0,
                  what="slurmctld to stop")  # fmt: skip
        proc, run_dir = slurm.start(SLEEPY_WDL, "n=1", "seconds=1", f"image={PULL_IMAGE}",
                                    args=["--verbose"])  # fmt: skip
        _wait_for(lambda: "Unable to contact slurm controller" in _task_logs(run_dir),
                  timeout=120, what="a submission to fail")  # fmt: skip
    finally:
        _slurmctld()
        _wait_for(_controller_up, timeout=120, what="the controller and node to be back")
    _finish(proc)
    assert "trying sbatch again" in _task_logs(run_dir)
    assert len(_jobs_of(proc)) == 1, _jobs_of(proc)


def test_job_taken_although_sbatch_timed_out_is_adopted(slurm: SlurmRun) -> None:
    """With slurmctld frozen, sbatch times out although the controller takes the job once it
    thaws (a busy cluster's 'Socket timed out'): the backend finds that job by its comment, or,
    if squeue answers before the controller has taken it, submits again and the claim lets only
    one of the two run the attempt, which the backend follows. Either way it runs once."""
    _slurmctld("-STOP", "-x")
    try:
        proc, run_dir = slurm.start(SLEEPY_WDL, "n=1", "seconds=1", f"image={PULL_IMAGE}",
                                    args=["--verbose"])  # fmt: skip
        _wait_for(lambda: "Socket timed out" in _task_logs(run_dir), timeout=180,
                  what="sbatch to time out")  # fmt: skip
    finally:
        _slurmctld("-CONT", "-x")
    _finish(proc)
    log = _task_logs(run_dir)
    jobs = _jobs_of(proc)
    (claim,) = _files(run_dir, "slurm/try1.claim")
    runner = claim.read_text()
    if "sbatch failed, but Slurm had taken the job" in log:
        assert [j["id"] for j in jobs] == [runner]
    else:  # the race: a second submission, never run
        assert "another Slurm job of this task attempt runs it" in log
        assert len(jobs) == 2 and runner in [j["id"] for j in jobs]
    (node_log,) = _files(run_dir, "slurm/try1.log")
    assert node_log.read_text().count("podman container started") == 1


def test_a_second_job_of_one_attempt_never_runs_it_twice(slurm: SlurmRun) -> None:
    """Two jobs for one task attempt: the one that claims it runs it and the backend follows
    that one (cancelling the other); the node helper started again for the same attempt exits
    without running anything."""
    held_env = {"MINIWDL__PODMAN_ROOTLESS_SLURM__EXTRA_ARGS": "--hold"}
    proc, run_dir = slurm.start(SLEEPY_WDL, "n=1", "seconds=1", f"image={PULL_IMAGE}",
                                args=["--verbose"], env=held_env)  # fmt: skip
    try:
        _wait_for(lambda: "slurm job submitted" in _task_logs(run_dir), what="the held job")
    except BaseException:
        proc.kill()
        raise
    (plan,) = _files(run_dir, "slurm/try1.json")
    held = [j["id"] for j in _jobs_of(proc)]
    assert len(held) == 1
    other = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={plan.parent.parent}", "--output=/dev/null",
         "--wrap", f"exec {sys.executable} -m miniwdl_podman node-run {plan}"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    _finish(proc)
    log = _task_logs(run_dir)
    assert "another Slurm job of this task attempt runs it" in log
    assert f'slurm job ended :: job_id: "{other}"' in log
    assert _squeue("--states=all", f"--jobs={held[0]}")[0]["state"] == "CANCELLED"
    result = plan.with_suffix(".result").read_text()
    again = subprocess.run([sys.executable, "-m", "miniwdl_podman", "node-run", str(plan)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"this task attempt is taken by {other}" in again.stderr
    assert "podman container" not in again.stderr
    assert plan.with_suffix(".result").read_text() == result


def test_preempted_job_is_interrupted_and_retried(slurm: SlurmRun) -> None:
    """A job preempted by a higher-priority partition's job (PREEMPTED) fails the attempt as
    Interrupted, retried under runtime.preemptible once there is room; the retry succeeds."""

    def urgent_job(_proc: subprocess.Popen[str], _run_dir: Path) -> None:
        # the test cluster's "urgent" partition preempts "main"; this job needs the whole node
        subprocess.run(
            ["sbatch", "-p", "urgent", "--cpus-per-task=8", "--mem=1G", "-J", "urgent-test",
             "-o", "/dev/null", "--wrap=sleep 3"], check=True, timeout=60, capture_output=True,
        )  # fmt: skip

    outcome = _fault_mid_task(slurm, urgent_job)
    _assert_retried_after(*outcome, "was preempted by Slurm (PREEMPTED)")


def test_job_over_its_memory_is_explained(slurm: SlurmRun) -> None:
    """A task that allocates past its runtime.memory is killed in its job's memory cgroup; the
    failure names the memory it asked for and the fix."""
    wdl = """
version 1.0
task hog {
    input { String image }
    command <<< s=$(head -c 400000000 /dev/zero | tr '\\0' x); echo ${#s} >>>
    runtime {
        docker: image
        memory: "100 MiB"
    }
}
"""
    res = slurm.run(wdl, f"image={PULL_IMAGE}")
    line = res.clean_failure_line()
    assert res.error is not None
    assert res.error["cause"]["exit_status"] == 137, line
    explanation = res.error["cause"]["explanation"]
    assert "100" in explanation and "memory" in explanation
    assert "raise runtime.memory" in explanation


def test_job_killed_at_its_time_limit_is_explained(slurm: SlurmRun) -> None:
    """A task past runtime.time_minutes is killed by Slurm; the error says so and how to fix
    it, and the container is removed."""
    wdl = """
version 1.0
task slow {
    input { String image }
    command <<< sleep 600 >>>
    runtime {
        docker: image
        time_minutes: 1
    }
}
"""
    res = slurm.run(wdl, f"image={PULL_IMAGE}", timeout=300)
    line = res.clean_failure_line()
    assert "was killed at its time limit (1 min)" in line
    assert "raise runtime.time_minutes" in line


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cancelling_the_run_cancels_jobs_and_containers(
    slurm: SlurmRun, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGINT/SIGTERM to miniwdl scancels every running job; their containers are removed."""
    returncode, stderr, run_dir = _fault_mid_task(
        slurm, lambda proc, _run_dir: proc.send_signal(sig), n=3, seconds=300
    )
    assert returncode != 0
    assert "Traceback" not in stderr
    log = next(run_dir.glob("*/workflow.log")).read_text()
    assert log.count("cancelled the task's Slurm job") == 3
    _wait_for(lambda: not [j for j in _squeue() if "sleepy" in j["name"]], timeout=60,
              what="the jobs to leave the queue")  # fmt: skip
    assert containers_under(tmp_path, STORE_ARGS) == []


def test_jobs_of_a_killed_run_are_cancelled_by_the_next(slurm: SlurmRun, tmp_path: Path) -> None:
    """Jobs left by a SIGKILLed miniwdl are scancel'd by the next run with the Slurm backend."""
    proc, run_dir = slurm.start(SLEEPY_WDL, "n=1", "seconds=300", f"image={PULL_IMAGE}")
    try:
        _wait_for(lambda: len(_started(run_dir)) == 1, what="the job to run")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    assert [j for j in _jobs_of(proc) if j["state"] == "RUNNING"]
    res = slurm.run(INDEXED_SCATTER_WDL, "n=1", f"image={PULL_IMAGE}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "cancelling Slurm jobs left by a dead miniwdl run" in res.log()
    _wait_for(lambda: not [j for j in _squeue() if "sleepy" in j["name"]], timeout=60,
              what="the orphaned job to end")  # fmt: skip


def test_a_job_whose_run_pid_was_recycled_is_cancelled_by_the_next(
    slurm: SlurmRun, tmp_path: Path
) -> None:
    """A job whose comment names a pid that now runs another process (this one, with another
    start time) was left by a dead run: the next run with the Slurm backend scancels it."""
    comment = slurm_mod.job_comment(os.getpid(), "1", socket.gethostname(), "recycled")
    out = subprocess.run(
        ["sbatch", "--parsable", f"--comment={comment}", "--job-name=mwp-recycled",
         f"--chdir={tmp_path}", "--output=/dev/null", "--wrap=sleep 300"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    job = out.stdout.strip().split(";")[0]
    try:
        res = slurm.run(INDEXED_SCATTER_WDL, "n=1", f"image={PULL_IMAGE}")
        assert res.returncode == 0, res.stderr[-3000:]
        cancelled = [ln for ln in res.log().splitlines() if "left by a dead miniwdl run" in ln]
        assert cancelled and job in cancelled[0], cancelled
        _wait_for(lambda: not [j for j in _squeue() if j["id"] == job], timeout=60,
                  what="the recycled-pid job to end")  # fmt: skip
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=60)


def test_doctor_in_a_slurm_job_checks_the_compute_node(slurm_cluster: str, tmp_path: Path) -> None:
    """`srun miniwdl-podman doctor` with the Slurm backend selected checks the node as the node
    helper will use it (no option needed): node storage, node python, its private service."""
    cfg = tmp_path / "slurm.cfg"
    cfg.write_text("[scheduler]\ncontainer_backend = podman_rootless_slurm\n")
    out = subprocess.run(
        ["srun", "--ntasks=1", f"--chdir={tmp_path}", "miniwdl-podman", "doctor", "--json",
         "--image", PULL_IMAGE],
        capture_output=True, text=True, timeout=600, env={**os.environ, "MINIWDL_CFG": str(cfg)},
    )  # fmt: skip
    assert "Traceback" not in out.stderr, out.stderr
    report = json.loads(out.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert "as a compute node" in checks["miniwdl config"]["detail"]
    assert checks["node storage"]["status"] == "PASS"
    assert checks["node storage"]["data"]["path"] == NODE_STORE
    assert checks["node python"]["status"] == "PASS"
    assert checks["test container (network none)"]["status"] == "PASS", checks


def test_job_slurm_refuses_fails_with_sbatch_words(slurm: SlurmRun) -> None:
    """runtime.gpu on a cluster without GPU gres: one line with sbatch's reason and the option."""
    wdl = """
version 1.0
task gpu {
    input { String image }
    command <<< true >>>
    runtime {
        docker: image
        gpu: true
    }
}
"""
    line = slurm.run(wdl, f"image={PULL_IMAGE}").clean_failure_line()
    assert "Slurm refused the task's job" in line
    assert "gres" in line.lower() and "gpu_gres" in line


def test_miniwdl_slurm_runtime_keys_place_the_job(slurm: SlurmRun) -> None:
    """A WDL written for miniwdl-slurm runs unchanged: slurm_partition, slurm_account and
    slurm_constraint place the job (as Slurm records it), over the site's defaults in
    extra_args; a GPU task takes the _gpu variants and asks --gres=gpu:TYPE:N."""
    wdl = """
version 1.0
workflow w {
    input { String image }
    call placed { input: image = image }
    output { String ok = placed.ok }
}
task placed {
    input { String image }
    command <<< echo ok >>>
    output { String ok = read_string(stdout()) }
    runtime {
        docker: image
        slurm_partition: "urgent"
        slurm_partition_gpu: "no-such-partition"
        slurm_account: "mwp-lab"
        slurm_constraint: "mwp-test"
        gpuCount: 2
    }
}
"""
    site = {"MINIWDL__PODMAN_ROOTLESS_SLURM__EXTRA_ARGS": "--partition=main --account=site"}
    res = slurm.run(wdl, f"image={PULL_IMAGE}", args=["--verbose"], env=site)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["w.ok"] == "ok"
    log = next(iter(_files(res.run_dir, "task.log"))).read_text()
    (job_id,) = re.findall(r'slurm job submitted :: job_id: "(\d+)"', log)
    job = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout
    assert "Partition=urgent" in job and "Account=mwp-lab" in job
    assert "Features=mwp-test" in job
    assert "gres" not in log.lower()  # gpuCount means nothing without runtime.gpu
    gpu_wdl = wdl.replace("gpuCount: 2", 'gpuCount: 2\n        gpuType: "fake"\n        gpu: true')
    gpu_res = slurm.run(gpu_wdl, f"image={PULL_IMAGE}", args=["--verbose"], env=site)
    assert "Slurm refused the task's job" in gpu_res.clean_failure_line()
    gpu_log = next(iter(_files(gpu_res.run_dir, "task.log"))).read_text()
    sbatch = next(ln for ln in gpu_log.splitlines() if "sbatch :: args" in ln)
    assert '"--partition=no-such-partition"' in sbatch and '"--gres=gpu:fake:2"' in sbatch
    assert '"--account=mwp-lab"' in sbatch and "--partition=main" not in sbatch


ECHO_TASK_WDL = """
version 1.0
task echo {
    input {
        String image
        String partition = "main"
    }
    command <<< echo ok >>>
    output { String ok = read_string(stdout()) }
    runtime {
        docker: image
        slurm_partition: partition
        time_minutes: 5
    }
}
"""


def _job_pending_for(run_dir: Path, reason: str) -> str:
    """The id of the run's job, once its task log shows it pending for ``reason``."""
    found: List[str] = []

    def pending() -> bool:
        for log in run_dir.glob("*/task.log"):
            found[:] = re.findall(
                rf'slurm job pending :: job_id: "(\d+)", reason: "{reason}"', log.read_text()
            )
        return bool(found)

    _wait_for(pending, timeout=60, what=f"the task log to show its job pending ({reason})")
    return found[0]


def test_a_held_job_shows_its_pending_reason_and_runs_once_released(slurm: SlurmRun) -> None:
    """While the task's job is pending, its log says why (once per change); released, it
    runs."""
    held = {"MINIWDL__PODMAN_ROOTLESS_SLURM__EXTRA_ARGS": "--hold"}
    proc, run_dir = slurm.start(ECHO_TASK_WDL, f"image={PULL_IMAGE}", env=held)
    try:
        job_id = _job_pending_for(run_dir, "JobHeldUser")
        time.sleep(12)  # a few more squeue rounds: the reason is logged once, not per round
        subprocess.run(["scontrol", "release", job_id], check=True)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out)["outputs"]["echo.ok"] == "ok"
    log = next(run_dir.glob("*/task.log")).read_text()
    reasons = re.findall(r'slurm job pending :: job_id: "\d+", reason: "([^"]*)"', log)
    # once per change (the held job was seen pending for several rounds); Slurm's "None"
    # between release and start is no reason
    assert reasons[0] == "JobHeldUser" and "None" not in reasons, log
    assert all(a != b for a, b in itertools.pairwise(reasons)), log
    assert "slurm job running" in log


def test_a_job_pending_past_pending_timeout_fails_naming_its_reason(slurm: SlurmRun) -> None:
    """pending_timeout: a job pending for one reason that long is cancelled and its task fails
    with the reason and the option."""
    env = {
        "MINIWDL__PODMAN_ROOTLESS_SLURM__EXTRA_ARGS": "--hold",
        "MINIWDL__PODMAN_ROOTLESS_SLURM__PENDING_TIMEOUT": "8",
    }
    res = slurm.run(ECHO_TASK_WDL, f"image={PULL_IMAGE}", env=env)
    line = res.clean_failure_line()
    assert "still pending after" in line and "JobHeldUser" in line
    assert "pending_timeout" in line
    (job_id,) = re.findall(r'slurm job submitted :: job_id: "(\d+)"', res.log())
    state = subprocess.run(
        ["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"], capture_output=True, text=True
    ).stdout.strip()
    assert state in ("CANCELLED", ""), state  # cancelled (or already forgotten), never run


def test_a_job_slurm_will_never_start_fails_at_once(slurm: SlurmRun) -> None:
    """A job asking for more than its partition allows (PartitionTimeLimit, which Slurm keeps
    pending for ever) fails its task at once with the reason, whatever pending_timeout says."""
    # without the verdict the run would wait for ever (pending_timeout is 0): the runner's
    # timeout would fail the test
    res = slurm.run(ECHO_TASK_WDL, f"image={PULL_IMAGE}", "partition=short", timeout=300)
    line = res.clean_failure_line()
    assert "Slurm will never start the task's job" in line and "PartitionTimeLimit" in line
    assert "time_minutes" in line and "scontrol show partition" in line


def test_a_private_image_pulls_on_the_node_with_a_shared_auth_file(
    slurm: SlurmRun, tmp_path: Path
) -> None:
    """REGISTRY_AUTH_FILE naming a file on the shared file system reaches the node helper's
    Podman (sbatch exports it): the node pulls the private image into its own store."""
    subprocess.run(["podman", *STORE_ARGS, "rmi", "--force", PRIVATE_IMAGE], capture_output=True)
    auth = private_auth_file(tmp_path / "auth.json")  # tmp_path: shared with the node here
    res = slurm.run(
        INDEXED_SCATTER_WDL, "n=1", f"image={PRIVATE_IMAGE}",
        env={"REGISTRY_AUTH_FILE": str(auth)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    exists = subprocess.run(["podman", *STORE_ARGS, "image", "exists", PRIVATE_IMAGE])
    assert exists.returncode == 0, "the node did not pull the private image into its store"


def test_credentials_only_in_the_login_nodes_runtime_dir_are_warned_of(
    slurm: SlurmRun, tmp_path: Path
) -> None:
    """`podman login`'s default file is in $XDG_RUNTIME_DIR, a per-host tmpfs: with it and no
    REGISTRY_AUTH_FILE, the run warns that compute nodes will pull without them, naming the
    fix (the run stops at once here: no sbatch, so no job reads this test's runtime dir)."""
    xdg = tmp_path / "xdg"
    (xdg / "containers").mkdir(parents=True)
    xdg.chmod(0o700)
    private_auth_file(xdg / "containers" / "auth.json")
    env = {"XDG_RUNTIME_DIR": str(xdg), "MINIWDL__PODMAN_ROOTLESS_SLURM__SBATCH": "/nonexistent"}
    res = slurm.run(INDEXED_SCATTER_WDL, "n=1", f"image={PRIVATE_IMAGE}", env=env)
    assert res.returncode != 0
    assert "registry credentials are in this login node's runtime dir" in res.stderr
    assert (
        "REGISTRY_AUTH_FILE" in res.stderr and str(xdg / "containers" / "auth.json") in res.stderr
    )


def test_node_storage_with_slurms_patterns_is_expanded_on_the_node(
    slurm: SlurmRun, tmp_path: Path, short_dir: Path
) -> None:
    """node_storage = DIR/s-%u-%j: each job gets a store named by its own user and job id
    (miniwdl leaves % alone; $VARs it would expand on the login node). A store whose run root
    Podman refuses as too long (over 50 characters) fails naming node_storage."""
    long_pattern = str(tmp_path / "store-%u-%j")
    line = slurm.run(
        INDEXED_SCATTER_WDL, "n=1", f"image={PULL_IMAGE}",
        env={"MINIWDL__PODMAN_ROOTLESS_SLURM__NODE_STORAGE": long_pattern},
    ).clean_failure_line()  # fmt: skip
    assert "longer than 50 characters" in line and "node_storage" in line
    res = slurm.run(
        INDEXED_SCATTER_WDL, "n=1", f"image={PULL_IMAGE}",
        env={"MINIWDL__PODMAN_ROOTLESS_SLURM__NODE_STORAGE": str(short_dir / "s-%u-%j")},
    )  # fmt: skip
    try:
        assert res.returncode == 0, res.stderr[-3000:]
        (job_id,) = re.findall(r'slurm job submitted :: job_id: "(\d+)"', _task_logs(res.run_dir))
        store = short_dir / f"s-{getpass.getuser()}-{job_id}"
        assert (store / "root").is_dir(), sorted(p.name for p in short_dir.iterdir())
        # the job released its store's mounts: the store can be removed as soon as it ended
        gone = subprocess.run(["podman", "unshare", "rm", "-rf", str(store)],
                              capture_output=True, text=True)  # fmt: skip
        assert gone.returncode == 0, gone.stderr
    finally:
        for made in short_dir.glob("s-*"):  # files of the container's uids: remove as them
            subprocess.run(["podman", "unshare", "rm", "-rf", str(made)], capture_output=True)


def test_node_without_the_helper_fails_clearly(slurm: SlurmRun) -> None:
    """A node_python that does not exist on the node: the job ends without a result, and the
    error names the option and the job's log."""
    res = slurm.run(
        INDEXED_SCATTER_WDL, "n=1", f"image={PULL_IMAGE}",
        env={"MINIWDL__PODMAN_ROOTLESS_SLURM__NODE_PYTHON": "/nonexistent/python3"},
    )  # fmt: skip
    line = res.clean_failure_line()
    assert "ended (FAILED) without a result" in line
    assert "node_python" in line and "/nonexistent/python3" in line


def test_node_side_pull_failure_comes_back_as_a_download_error(slurm: SlurmRun) -> None:
    """An image the node cannot pull fails the task with the pull error (a DownloadFailed, as
    locally), naming the node and the job."""
    res = slurm.run(
        INDEXED_SCATTER_WDL, "n=1", f"image={REGISTRY}/miniwdl-podman-test/no-such-image:1"
    )
    line = res.clean_failure_line()
    assert "cannot pull container image" in line and "no-such-image" in line
    assert "(on " in line and "Slurm job" in line
    assert res.error is not None and res.error["cause"]["error"] == "ImagePullFailed"


def test_a_scatter_runs_on_the_node_from_the_shared_store(
    slurm: SlurmRun, tmp_path: Path, short_dir: Path
) -> None:
    """With shared_store, the run stages the image from the login node at its first use (its
    registry already gone: the user's own copy serves), and every job runs it from the shared
    store, pinned to that one image, on an empty node store of its own that gets no image."""
    shared = short_dir / "shared"
    up = relay()
    up.start()
    try:
        podman("pull", "--tls-verify=false", RELAYED_IMAGE)
    finally:
        up.stop()
    try:
        res = slurm.run(
            INDEXED_SCATTER_WDL, "n=3", f"image={RELAYED_IMAGE}",
            env={"MINIWDL__PODMAN_ROOTLESS__SHARED_STORE": str(shared),
                 "MINIWDL__PODMAN_ROOTLESS_SLURM__NODE_STORAGE": str(short_dir / "s-%j")},
            args=["--verbose"],
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.outputs["w.got"] == [0, 1, 2]
        ((image_id, _meta),) = staged_images(shared).items()
        assert res.log().count("image staged in shared store") == 1
        node_logs = [p.read_text() for p in _files(res.run_dir, "slurm/try1.log")]
        assert len(node_logs) == 3
        assert all(f"image in shared store :: image: \"{RELAYED_IMAGE}\", id: \"{image_id[:12]}\""
                   in log for log in node_logs)  # fmt: skip
        assert not any("pulling image" in log for log in node_logs)
        # the run report reads the Slurm backend's records too: a row per job, with its node
        tsv = short_dir / "run.tsv"
        made = subprocess.run([sys.executable, "-m", "miniwdl_podman", "report",
                               str(res.run_dir / "_LAST"), "--tsv", str(tsv)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert made.returncode == 0, made.stderr
        rows = [ln.split("\t") for ln in tsv.read_text().splitlines()[1:]]
        assert sorted(r[7] for r in rows) == [socket.gethostname()] * 3  # node
        assert all(r[8].isdigit() and r[2] == "ok" for r in rows)  # job id, state
        stores = list(short_dir.glob("s-*"))
        assert len(stores) == 3
        for store in stores:  # the node stores hold no image of their own
            index = store / "root" / "overlay-images" / "images.json"
            assert not index.exists() or json.loads(index.read_text()) == [], index
    finally:
        podman("rmi", "-f", RELAYED_IMAGE, check=False)
        for made in [*short_dir.glob("s-*"), shared]:
            subprocess.run(["podman", "unshare", "rm", "-rf", str(made)], capture_output=True)


def test_the_site_epilog_removes_each_jobs_node_store(slurm: SlurmRun) -> None:
    """The README's Epilog (contrib/slurm/epilog.sh; the test bed installs it with
    NODE_STORAGE=/tmp/mwp-epi-%u-%j) removes each job's own node store once the job ends."""
    stores = f"/tmp/mwp-epi-{getpass.getuser()}-*"
    proc, run_dir = slurm.start(
        SLEEPY_WDL, "n=2", "seconds=4", f"image={PULL_IMAGE}",
        env={"MINIWDL__PODMAN_ROOTLESS_SLURM__NODE_STORAGE": "/tmp/mwp-epi-%u-%j"},
    )  # fmt: skip
    try:
        _wait_for(lambda: len(_started(run_dir)) == 2, what="both jobs to run")
        job_ids = re.findall(r'slurm job submitted :: job_id: "(\d+)"', _task_logs(run_dir))
        seen = {Path(p).name for p in glob.glob(stores)}
        assert {f"mwp-epi-{getpass.getuser()}-{j}" for j in job_ids} <= seen, (job_ids, seen)
        _finish(proc)
    finally:
        proc.kill()
    assert proc.returncode == 0
    _wait_for(lambda: not (set(Path(p).name for p in glob.glob(stores)) & seen), timeout=90,
              what="the Epilog to remove the jobs' node stores")  # fmt: skip


TWO_STEPS_WDL = """
version 1.0
workflow w {
    input { String image }
    call t as first { input: image = image, after = "" }
    call t as second { input: image = image, after = first.out }
}
task t {
    input {
        String image
        String after
    }
    command <<< sleep 3; echo done >>>
    output { String out = read_string(stdout()) }
    runtime { docker: image }
}
"""


@pytest.mark.parametrize("pin", [True, False])
def test_a_tag_pushed_anew_mid_run_does_not_change_the_runs_image(
    slurm: SlurmRun, short_dir: Path, pin: bool
) -> None:
    """pin_digests: the run's first job records the digest it got for the tag; a later job, on
    an empty node store of its own, after the tag was pushed anew, runs that same image (by
    digest). With pin_digests = false the later job gets the new image."""
    moving = f"{REGISTRY}/miniwdl-podman-test/moving-{os.getpid()}-{int(pin)}:1"
    other = "localhost/miniwdl-podman/user-nobody:2"
    first_id, other_id = (json.loads(podman("image", "inspect", i).stdout)[0]["Id"]
                          for i in (BASE_IMAGE, other))  # fmt: skip
    podman("push", "--tls-verify=false", BASE_IMAGE, moving)
    proc, run_dir = slurm.start(
        TWO_STEPS_WDL, f"image={moving}",
        env={"MINIWDL__PODMAN_ROOTLESS_SLURM__NODE_STORAGE": str(short_dir / "s-%j"),
             "MINIWDL__PODMAN_ROOTLESS_SLURM__PIN_DIGESTS": str(pin).lower()},
    )  # fmt: skip
    try:
        _wait_for(lambda: len(_started(run_dir)) == 1, what="the first job to run")
        pinned = [p for p in run_dir.glob("*/.miniwdl-podman/pins/*.json") if "_LAST" not in str(p)]
        assert len(pinned) == (1 if pin else 0), pinned
        podman("push", "--tls-verify=false", other, moving)
        _finish(proc)
    finally:
        proc.kill()
        for made in short_dir.glob("s-*"):
            subprocess.run(["podman", "unshare", "rm", "-rf", str(made)], capture_output=True)
    ran = [json.loads(next(run_dir.glob(f"*/call-{c}/usage.1.json")).read_text())["image_id"]
           for c in ("first", "second")]  # fmt: skip
    assert ran == [first_id, first_id if pin else other_id], (ran, first_id, other_id)
    if pin:
        assert "image pinned for the run :: " in "".join(
            p.read_text() for p in _files(run_dir, "slurm/try1.log")
        )


_FORGETFUL = r"""#!/bin/sh
# {name} as a controller that has already forgotten every ended job (MinJobAge passed)
terminal='BOOT_FAIL|CANCELLED|COMPLETED|DEADLINE|FAILED|NODE_FAIL|OUT_OF_MEMORY|PREEMPTED|TIMEOUT'
out=$({real} "$@") || exit $?
case {name} in
squeue) kept=$(printf '%s\n' "$out" | grep -Ev "^[^|]*\|($terminal)\|" || true)
        if [ -z "$kept" ] && printf '%s ' "$@" | grep -q -- '--jobs='; then
            echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1
        fi
        [ -z "$kept" ] || printf '%s\n' "$kept" ;;
scontrol) if printf '%s\n' "$out" | grep -Eq "JobState=($terminal)"; then
              echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1
          fi
          printf '%s\n' "$out" ;;
esac
"""


def test_a_job_the_controller_forgot_gets_its_end_from_sacct(
    slurm: SlurmRun, tmp_path: Path
) -> None:
    """When squeue and scontrol no longer know an ended job (MinJobAge), its final state comes
    from Slurm's accounting: a job that ended without a result is named FAILED, not UNKNOWN;
    the usage record of a job that ran carries sacct's MaxRSS and TotalCPU."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "sacct"):
        real = shutil.which(name)
        assert real, f"{name} not found"
        script = bindir / name
        if name in ("squeue", "scontrol"):
            script.write_text(_FORGETFUL.format(name=name, real=real))
        else:
            script.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
        script.chmod(0o755)
    env = {"MINIWDL__PODMAN_ROOTLESS_SLURM__SBATCH": str(bindir / "sbatch")}
    no_helper = {**env, "MINIWDL__PODMAN_ROOTLESS_SLURM__NODE_PYTHON": "/nonexistent/python3"}
    res = slurm.run(INDEXED_SCATTER_WDL, "n=1", f"image={PULL_IMAGE}", env=no_helper)
    line = res.clean_failure_line()
    assert "ended (FAILED) without a result" in line, line
    # a failed run's usage line goes to its workflow.log only: the terminal ends on the error
    (log,) = [p for p in res.run_dir.glob("*/workflow.log") if "_LAST" not in str(p)]
    assert "run usage :: tasks: 1" in log.read_text().splitlines()[-1]

    res = slurm.run(INDEXED_SCATTER_WDL, "n=1", f"image={PULL_IMAGE}", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    (rec,) = [json.loads(p.read_text()) for p in _files(res.run_dir, "usage.1.json")]
    assert rec["slurm"]["state"] == "COMPLETED"
    assert rec["slurm"]["total_cpu_seconds"] is not None
