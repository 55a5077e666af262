"""``miniwdl-podman pull``: every image a workflow may use, got up front, as the user."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from .conftest import BASE_IMAGE, PULL_IMAGE, REGISTRY, podman

pytestmark = pytest.mark.podman

WDL_TEXT = """
version 1.0
workflow w {
    input {
        String image
        Array[String] tags = ["a"]
    }
    call t as pulled { input: image = image }
    call t as local { input: image = "BASE_IMAGE" }
    scatter (tag in tags) {
        call t as per_tag { input: image = "REGISTRY/miniwdl-podman-test/pullme:" + tag }
    }
}
task t {
    input { String image }
    command <<< true >>>
    runtime { docker: image }
}
""".replace("BASE_IMAGE", BASE_IMAGE).replace("REGISTRY", REGISTRY)


def _pull(tmp_path: Path, *inputs: str) -> Any:
    wdl = tmp_path / "w.wdl"
    wdl.write_text(WDL_TEXT)
    cfg = tmp_path / "miniwdl.cfg"
    cfg.write_text("")
    return subprocess.run(
        [sys.executable, "-m", "miniwdl_podman", "pull", str(wdl), *inputs, "--cfg", str(cfg)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_pull_gets_every_image_once_and_prints_its_digest(
    rootless_podman: Dict[str, Any], tmp_path: Path
) -> None:
    """An image not in the store is pulled, a local one is used as it is; each is printed with
    its digest; an image only the run can know (a scatter element's) is listed, not guessed."""
    podman("rmi", "--force", PULL_IMAGE, check=False)
    res = _pull(tmp_path, f"image={PULL_IMAGE}")
    assert res.returncode == 0, res.stderr
    assert podman("image", "exists", PULL_IMAGE, check=False).returncode == 0
    # an image pushed from a local one has several digests (the store lists each for each of
    # its names): the one printed is one the store knows for it
    inspect = json.loads(podman("image", "inspect", PULL_IMAGE).stdout)[0]
    known = {inspect["Digest"], *(d.split("@", 1)[1] for d in inspect.get("RepoDigests") or [])}
    (line,) = [ln for ln in res.stdout.splitlines() if ln.startswith(f"{PULL_IMAGE} → ")]
    assert line.split(" → ", 1)[1] in known, (line, known)
    assert f"{BASE_IMAGE} → sha256:" in res.stdout
    assert "call w.per_tag (task t): runtime.docker is known only at run time" in res.stdout


def test_pull_fails_up_front_naming_every_image_that_cannot_be_had(
    rootless_podman: Dict[str, Any], tmp_path: Path
) -> None:
    """An image the registry does not have fails the command (exit 1) with the registry's word,
    after the others were got; no traceback."""
    missing = f"{REGISTRY}/miniwdl-podman-test/no-such-image:1"
    res = _pull(tmp_path, f"image={missing}")
    assert res.returncode == 1
    assert "1 image(s) cannot be had" in res.stderr and missing in res.stderr
    assert "Traceback" not in res.stderr
    assert f"{BASE_IMAGE} → sha256:" in res.stdout


def test_pull_refuses_what_is_not_wdl_in_one_line(
    rootless_podman: Dict[str, Any], tmp_path: Path
) -> None:
    """A document that does not parse, or an input it does not have, is one line (exit 2)."""
    bad = tmp_path / "bad.wdl"
    bad.write_text("version 1.0\nworkflow {")
    res = subprocess.run([sys.executable, "-m", "miniwdl_podman", "pull", str(bad)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and "is not valid WDL" in res.stderr
    assert "Traceback" not in res.stderr
    res = _pull(tmp_path, "nosuch=1")
    assert res.returncode == 2 and "No such input" in res.stderr
