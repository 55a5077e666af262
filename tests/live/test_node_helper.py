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
from typing import Any, Dict, Optional, Tuple

import pytest

from miniwdl_podman import mounts, protocol
from miniwdl_podman import plan as plan_mod
from miniwdl_podman.settings import Settings
from miniwdl_podman.shared_store import SharedStore, Staged

from .conftest import BASE_IMAGE, PULL_IMAGE, containers_under, foreign_owned
from .test_shared_store import stage

pytestmark = pytest.mark.podman
USER_IMAGE = "localhost/miniwdl-podman/user-1000:2"


def _job(
    tmp_path: Path,
    short_dir: Path,
    image: str,
    command: str,
    staged: Optional[Staged] = None,
    pins: str = "",
    name: str = "call-t",
    store: str = "store",
) -> Tuple[Dict[str, str], Path]:
    """A task attempt laid out as miniwdl lays one out, with one input file; its job file."""
    task = tmp_path / name
    work = task / "work"
    work.mkdir(parents=True)
    (task / "stdout.txt").touch()
    (task / "stderr.txt").touch()
    (task / "command").write_text(command)
    data = tmp_path / "inputs" / "data.txt"
    data.parent.mkdir(exist_ok=True)
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
        storage=str(short_dir / store),
        runtime_dir=str(short_dir),
        staged=staged,
        pins=pins,
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


def test_node_helper_runs_the_image_its_job_names_from_the_shared_store(
    tmp_path: Path, short_dir: Path
) -> None:
    """A job naming an image staged in the shared store runs it from there (its service reads
    that store, on this Podman) on an empty node store that receives no image."""
    shared = short_dir / "shared"
    try:
        staging = stage(tmp_path, shared, BASE_IMAGE)
        assert staging.returncode == 0, staging.stderr
        staged = SharedStore(str(shared)).find(BASE_IMAGE)
        assert staged is not None
        files, _task = _job(tmp_path, short_dir, BASE_IMAGE, "test -x /bin/sh\n", staged=staged)
        proc, result = _node_run(files)
        assert proc.returncode == 0 and result["exit_code"] == 0, proc.stderr[-3000:]
        assert f'image in shared store :: image: "{BASE_IMAGE}"' in proc.stderr
        assert result["image_id"] == staged.id
        index = short_dir / "store" / "root" / "overlay-images" / "images.json"
        assert not index.exists() or json.loads(index.read_text()) == []
    finally:
        subprocess.run(["podman", "unshare", "rm", "-rf", str(shared), str(short_dir / "store")],
                       capture_output=True)  # fmt: skip


def test_node_helper_pins_a_tag_for_the_run(tmp_path: Path, short_dir: Path) -> None:
    """The run's first job to need a tag records its digest in the run's pin directory; the
    next job (another node store) runs repository@digest."""
    pins = str(tmp_path / "pins")
    first, _ = _job(tmp_path, short_dir, PULL_IMAGE, "true\n", pins=pins, name="call-a",
                    store="s1")  # fmt: skip
    proc, result = _node_run(first)
    assert proc.returncode == 0 and result["exit_code"] == 0, proc.stderr[-3000:]
    assert "image pinned for the run by this job" in proc.stderr
    second, _ = _job(tmp_path, short_dir, PULL_IMAGE, "true\n", pins=pins, name="call-b",
                     store="s2")  # fmt: skip
    proc, again = _node_run(second)
    assert proc.returncode == 0 and again["exit_code"] == 0, proc.stderr[-3000:]
    repo = PULL_IMAGE.rsplit(":", 1)[0]
    assert f'image pinned for the run :: image: "{PULL_IMAGE}", reference: "{repo}@sha256:' in (
        proc.stderr
    )
    assert again["image_id"] == result["image_id"]
