"""Staging and aliasing of paths the Podman API cannot carry (host files only, no Podman)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from miniwdl_podman import errors, mounts, staging
from miniwdl_podman import plan as plan_mod

ODD = os.fsdecode(b"odd\n\xff")
LOG = logging.getLogger("test")


def _plan(tmp_path: Path, staged: list, sources: list) -> plan_mod.TaskPlan:  # type: ignore[type-arg]
    return plan_mod.TaskPlan(
        run_id="r", task_dir=str(tmp_path), try_counter=1, container_dir="/c",
        mounts=[mounts.Mount(s, f"/c/m{i}", True) for i, s in enumerate(sources)],
        staged=staged,
    )  # fmt: skip


def test_inputs_are_linked_under_their_exact_names_and_removed_after(tmp_path: Path) -> None:
    """A file is hard-linked over its empty mount point, a directory rebuilt of links (inner
    symlinks kept); closing removes both and leaves the inputs as they were."""
    data = tmp_path / ODD
    (data / "d" / "sub").mkdir(parents=True)
    (data / "f").write_bytes(b"file\n")
    (data / "d" / "sub" / ODD).write_bytes(b"inner\n")
    (data / "d" / "link").symlink_to("sub")
    work = tmp_path / "work" / "_miniwdl_inputs" / "0"
    work.mkdir(parents=True)
    (work / ODD).touch()
    (work / f"{ODD}d").mkdir()
    staged = [
        mounts.Staged(str(data / "f"), str(work / ODD), False),
        mounts.Staged(str(data / "d"), str(work / f"{ODD}d"), True),
    ]
    prepared = staging.prepare(_plan(tmp_path, staged, []), LOG)
    assert (work / ODD).read_bytes() == b"file\n"
    assert os.stat(work / ODD).st_ino == os.stat(data / "f").st_ino
    assert (work / f"{ODD}d" / "sub" / ODD).read_bytes() == b"inner\n"
    assert os.readlink(work / f"{ODD}d" / "link") == "sub"
    assert prepared.copied_bytes == 0
    prepared.close()
    assert sorted(os.listdir(work)) == []
    assert (data / "f").stat().st_nlink == 1 and (data / "d" / "sub" / ODD).exists()


def test_sources_the_api_cannot_carry_get_plain_aliases(tmp_path: Path) -> None:
    """An unsafe mount source gets a symlink with a plain path; closing removes it."""
    odd_dir = tmp_path / ODD
    odd_dir.mkdir()
    prepared = staging.prepare(_plan(tmp_path, [], [str(odd_dir), str(tmp_path)]), LOG)
    (alias,) = prepared.aliases.values()
    assert list(prepared.aliases) == [str(odd_dir)] and mounts.api_safe(alias)
    assert os.path.samefile(alias, odd_dir)
    prepared.close()
    assert not os.path.lexists(alias)


def test_a_mount_point_that_is_not_empty_is_never_replaced(tmp_path: Path) -> None:
    """If the staged input's place holds a file with content, staging fails and touches it not."""
    (tmp_path / "in").write_text("in")
    (tmp_path / "there").write_text("keep me")
    staged = [mounts.Staged(str(tmp_path / "in"), str(tmp_path / "there"), False)]
    with pytest.raises(errors.BackendError):
        staging.prepare(_plan(tmp_path, staged, []), LOG)
    assert (tmp_path / "there").read_text() == "keep me"
