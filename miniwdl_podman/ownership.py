"""After a task: find files it left that the invoking user does not own.

The identity policy makes everything a task writes owned by the invoking user, except what a
process that is root *inside* deliberately gives to another uid (``chown``, ``tar -x`` as root
preserving owners, ...): on the host such files belong to a subordinate uid, which the user
cannot even delete. This module finds them (never following links, never entering input
mounts, which are empty placeholders on the host); the backend then gives them back through
the engine (``podman unshare chown``) when ``[file_io] chown`` is true, or reports them.
"""

from __future__ import annotations

import os
from typing import Iterable, List


def foreign_paths(roots: Iterable[str], uid: int, gid: int) -> List[str]:
    """Every path under ``roots`` (roots included) whose owner or group is not ``uid:gid``."""
    ans: List[str] = []

    def check(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if st.st_uid != uid or st.st_gid != gid:
            ans.append(path)

    for root in roots:
        check(root)
        if not os.path.isdir(root) or os.path.islink(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                check(os.path.join(dirpath, name))
    return ans


def describe(paths: List[str], most: int = 5) -> str:
    """A short list of paths for a log line or error message."""
    shown = ", ".join(paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")
