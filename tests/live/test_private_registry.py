"""Images from a registry that wants credentials: how a user gives them (the local backend;
the Slurm backend's case is in test_slurm.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import INDEXED_SCATTER_WDL, PRIVATE_IMAGE, Miniwdl, podman, private_auth_file

pytestmark = pytest.mark.podman


def test_a_private_image_without_credentials_fails_naming_how_to_give_them(
    miniwdl: Miniwdl, tmp_path: Path
) -> None:
    """The registry's 'unauthorized' comes back in one line with the fix: podman login, or an
    auth file in REGISTRY_AUTH_FILE (shared with the nodes for Slurm)."""
    podman("rmi", "--force", PRIVATE_IMAGE, check=False)
    empty = tmp_path / "none.json"
    empty.write_text('{"auths": {}}')
    res = miniwdl.run(
        INDEXED_SCATTER_WDL, "n=1", f"image={PRIVATE_IMAGE}",
        env={"REGISTRY_AUTH_FILE": str(empty)},
    )  # fmt: skip
    line = res.clean_failure_line()
    assert "unauthorized" in line.lower() or "authentication required" in line.lower()
    assert "podman login" in line and "REGISTRY_AUTH_FILE" in line


def test_a_private_image_pulls_with_an_auth_file_in_registry_auth_file(
    miniwdl: Miniwdl, tmp_path: Path
) -> None:
    """`podman login --authfile FILE` and REGISTRY_AUTH_FILE=FILE: the run pulls the image."""
    podman("rmi", "--force", PRIVATE_IMAGE, check=False)
    auth = private_auth_file(tmp_path / "auth.json")
    res = miniwdl.run(
        INDEXED_SCATTER_WDL, "n=1", f"image={PRIVATE_IMAGE}",
        env={"REGISTRY_AUTH_FILE": str(auth)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert podman("image", "exists", PRIVATE_IMAGE, check=False).returncode == 0
