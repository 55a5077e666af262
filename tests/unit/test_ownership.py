"""The post-task scan for files not owned by the invoking user."""

from __future__ import annotations

import os
from pathlib import Path

from miniwdl_podman import ownership


def test_finds_only_foreign_paths_without_following_links(tmp_path: Path) -> None:
    """Paths owned by someone else are found; a symlink is judged itself, not its target."""
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f.txt").write_text("x")
    (tmp_path / "link").symlink_to("/etc/passwd")
    uid, gid = os.getuid(), os.getgid()
    assert ownership.foreign_paths([str(tmp_path)], uid, gid) == []
    # pretend to be someone else: everything is then foreign, the link included
    found = ownership.foreign_paths([str(tmp_path)], uid + 1, gid)
    assert str(tmp_path / "link") in found
    assert str(tmp_path / "d" / "e" / "f.txt") in found
    assert ownership.foreign_paths([str(tmp_path / "missing")], uid, gid) == []


def test_describe_shortens_long_lists() -> None:
    """Long lists are cut to a few names and a count."""
    assert ownership.describe(["a", "b"]) == "a, b"
    assert ownership.describe([str(i) for i in range(8)], most=3) == "0, 1, 2 and 5 more"
