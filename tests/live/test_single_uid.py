"""Single-uid mode, live: a user with no subordinate uid/gid range (run by ``nox -s rootless``
as such a user; deselected elsewhere by ``-m 'not single_uid'``)."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Dict

import pytest

from .conftest import BASE_IMAGE, Miniwdl, foreign_owned

pytestmark = [pytest.mark.podman, pytest.mark.single_uid]

NOBODY_IMAGE = "localhost/miniwdl-podman/busybox-bash-nobody:2"
WDL = """
version 1.0
task t {
    input { String image }
    command <<<
        id -u > uid
        mkdir -p out && echo hi > out/f.txt && echo home > "$HOME/h"
    >>>
    output {
        Int uid = read_int("uid")
        File f = "out/f.txt"
    }
    runtime { docker: image }
}
"""


@pytest.fixture(autouse=True)
def _no_subuids(rootless_podman: Dict[str, Any]) -> None:
    maps = rootless_podman["host"]["idMappings"]["uidmap"]
    if sum(m["size"] for m in maps) != 1:
        pytest.fail("single-uid tests must run as a user with no subuid range (nox -s rootless)")


def test_root_image_runs_as_container_root_owned_by_user(miniwdl: Miniwdl) -> None:
    """Without subuids a root image runs (as container root = the user), outputs are the user's,
    and the run log explains single-uid mode."""
    res = miniwdl.run(WDL, f"image={BASE_IMAGE}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["t.uid"] == 0
    assert foreign_owned(res.run_dir) == []
    assert os.stat(res.outputs["t.f"]).st_uid == os.getuid()
    assert "single-uid mode" in res.log()


def test_user_image_fails_with_reason_and_fix(miniwdl: Miniwdl) -> None:
    """An image with a non-root USER fails with one line: no subuid range, and how to get one."""
    res = miniwdl.run(WDL, f"image={NOBODY_IMAGE}")
    last = res.clean_failure_line()
    assert "runs as non-root user 'nobody'" in last
    assert "no subordinate uid/gid range" in last
    assert "usermod --add-subuids" in last


def test_as_user_runs_user_image_as_container_root(miniwdl: Miniwdl) -> None:
    """With [task_runtime] as_user = true the USER image runs, as container root (= the user)."""
    res = miniwdl.run(WDL, f"image={NOBODY_IMAGE}", env={"MINIWDL__TASK_RUNTIME__AS_USER": "true"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["t.uid"] == 0
    assert foreign_owned(res.run_dir) == []


def test_doctor_reports_single_uid_mode_with_the_fix(miniwdl: Miniwdl) -> None:
    """doctor warns that the user has no subuid range and names the administrator's command,
    while a test container still runs."""
    env = {**os.environ, "MINIWDL_CFG": str(miniwdl.cfg)}
    proc = subprocess.run(
        ["miniwdl-podman", "doctor", "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    report = json.loads(proc.stdout)
    (subuids,) = [c for c in report["checks"] if c["name"] == "subuids"]
    assert subuids["status"] == "WARN"
    assert "single-uid mode" in subuids["detail"]
    assert "usermod --add-subuids" in subuids["fix"]
    (run,) = [c for c in report["checks"] if c["name"] == "test container (network none)"]
    assert run["status"] == "PASS"
