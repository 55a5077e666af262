"""The Slurm backend's node helper, live, without Slurm: ``node-run`` of a real job file.

The Slurm cluster of the ``slurm`` tests runs on the host lane only; these tests prove the node
side (private service on a node-local store, the same Launcher, result file, claim) on every
Podman lane, by running the helper the way a job's batch script does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from miniwdl_podman import mounts, protocol
from miniwdl_podman import plan as plan_mod
from miniwdl_podman.settings import Settings

from .conftest import PULL_IMAGE, containers_under, foreign_owned

pytestmark = pytest.mark.podman
USER_IMAGE = "localhost/miniwdl-podman/user-1000:2"


def _job(tmp_path: Path, short_dir: Path, image: str, command: str) -> Tuple[Dict[str, str], Path]:
    """A task attempt laid out as miniwdl lays one out, with one input file; its job file."""
    task = tmp_path / "call-t"
    work = task / "work"
    work.mkdir(parents=True)
    (task / "stdout.txt").touch()
    (task / "stderr.txt").touch()
    (task / "command").write_text(command)
    data = tmp_path / "inputs" / "data.txt"
    data.parent.mkdir()
    data.write_text("from the login node\n")
    cdir = "/mnt/miniwdl_task_container"
    paths = mounts.TaskPaths(cdir, str(work), str(task / "stdout.txt"),
                             str(task / "stderr.txt"), str(task / "command"))  # fmt: skip
    plan = plan_mod.TaskPlan(
        run_id="node-test",
        task_dir=str(task),
        try_counter=1,
        container_dir=cdir,
        mounts=mounts.task_mounts(paths, {str(data): f"{cdir}/inputs/0/data.txt"}),
        image=image,
        network="none",
        security_opt=mounts.selinux_options("disable")[0],
        writable=[str(work), str(task / "stdout.txt"), str(task / "stderr.txt")],
    )
    (task / "slurm").mkdir()
    files = protocol.write_job(
        str(task / "slurm" / "try1"),
        plan,
        Settings(),
        storage=str(short_dir / "store"),
        runtime_dir=str(short_dir),
    )
    return files, task


def _node_run(files: Dict[str, str]) -> Tuple[subprocess.CompletedProcess[str], Dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "miniwdl_podman", "node-run", files["json"]],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return proc, json.loads(Path(files["result"]).read_text())


def _store(short_dir: Path) -> Tuple[str, ...]:
    return (
        "--root",
        str(short_dir / "store" / "root"),
        "--runroot",
        str(short_dir / "store" / "run"),
    )


def test_node_helper_runs_a_plan_on_a_node_local_store(
    rootless_podman: Dict[str, Any], tmp_path: Path, short_dir: Path
) -> None:
    """node-run pulls into the node store, runs the plan's command with its input mounted
    read-only, writes the result and leaves no container and no foreign-owned file."""
    files, task = _job(
        tmp_path, short_dir, PULL_IMAGE,
        "cat /mnt/miniwdl_task_container/inputs/0/data.txt > out.txt\n"
        "touch /mnt/miniwdl_task_container/inputs/0/data.txt 2>/dev/null && echo writable\n"
        "id -u\n",
    )  # fmt: skip
    proc, result = _node_run(files)
    assert proc.returncode == 0, proc.stderr
    assert result["format"] == protocol.FORMAT
    assert result["exit_code"] == 0
    assert (task / "work" / "out.txt").read_text() == "from the login node\n"
    assert (task / "stdout.txt").read_text().split() == ["0"]  # root image: container root = you
    assert Path(files["started"]).exists()
    assert foreign_owned(task) == []
    assert containers_under(tmp_path, _store(short_dir)) == []


def test_node_helper_reports_a_failing_command_and_a_user_image(
    rootless_podman: Dict[str, Any], tmp_path: Path, short_dir: Path
) -> None:
    """A USER-1000 image's command runs as the image user and leaves files owned by you; its
    exit status comes back in the result and as node-run's own."""
    # a local-only image: the node store gets it from an archive, as `podman load` would
    archive = short_dir / "user.tar"
    subprocess.run(["podman", "save", "-q", "-o", str(archive), USER_IMAGE], check=True)
    subprocess.run(["podman", *_store(short_dir), "load", "-q", "-i", str(archive)], check=True,
                   capture_output=True)  # fmt: skip
    files, task = _job(tmp_path, short_dir, USER_IMAGE, "id -u > who.txt\nexit 3\n")
    proc, result = _node_run(files)
    assert proc.returncode == 3, proc.stderr
    assert result["exit_code"] == 3
    assert (task / "work" / "who.txt").read_text().strip() == "1000"
    assert os.stat(task / "work" / "who.txt").st_uid == os.getuid()
    assert foreign_owned(task) == []
    assert containers_under(tmp_path, _store(short_dir)) == []
    assert containers_under(tmp_path) == []  # nor in the user's own store
