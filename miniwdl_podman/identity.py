"""Identity policy: which user namespace and in-container user a task runs with.

Pure functions only. The goal: every file a task leaves on the host is owned by the invoking
user, with no chown afterwards and no sudo. In rootless Podman, ``--userns keep-id`` maps the
invoking uid/gid to the same ids inside the container and runs the command as that user, so
everything it writes through a bind mount is owned by the invoking user on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Union

UsernsMode = Union[str, Dict[str, str]]


@dataclass(frozen=True)
class Identity:
    """The user-namespace mode and in-container user to create the container with."""

    userns: UsernsMode
    user: Optional[str] = None


def plan(uid: int, gid: int) -> Identity:
    """Identity for a task run by host ``uid:gid``: keep-id, so the command runs as that user.

    With keep-id and no explicit user, Podman runs the command as the invoking uid:gid and adds
    a matching passwd/group entry inside the container.
    """
    del uid, gid  # keep-id maps the caller's own ids; they are named here for the log only
    return Identity(userns="keep-id")
