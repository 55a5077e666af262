"""What ``miniwdl-podman doctor --fix`` does for the checks that name a fix action.

Only what a user can do without root, each file backed up first
(:mod:`~miniwdl_podman.configfiles`):

- ``runtime``: crun on a cgroup v1 host → ``runtime = "runc"`` in a drop-in of our own,
  ``containers.conf.d/50-miniwdl-podman.conf`` (the user's containers.conf is not touched);
- ``storage``: storage on a network file system, on tmpfs, or the vfs driver → a node-local
  graphroot with the overlay driver in storage.conf, edited in place (comments and other
  settings kept; a fresh store; the old one is left alone);
- ``network``: /dev/net/tun unusable → ``[podman_rootless] network = none`` in the user's
  miniwdl config, edited in place; a site-wide one (not the user's) is not edited: the message
  says what to put in the user's own file;
- ``leftovers``: containers left by dead miniwdl runs → removed.

Each message starts with ``fixed:`` or ``not changed:`` (a file laid out in a way the editors
do not change safely, or one the user may not write, is left alone with what to do by hand).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional

from . import host
from .configfiles import (
    EditRefused,
    containers_config_dir,
    update_miniwdl_cfg,
    update_toml,
    write_dropin,
)
from .doctor import FAIL, WARN, Check
from .runtime import open_runtime
from .settings import SECTION, Settings


def apply(
    checks: List[Check],
    *,
    uid: int,
    cfg_path: Optional[str],
    settings: Optional[Settings],
    logger: logging.Logger,
) -> List[str]:
    """Apply the fixes the failed/warned checks name; describe what was done."""
    actions = {c.action for c in checks if c.action and c.status in (WARN, FAIL)}
    done: List[str] = []
    cfg_dir = containers_config_dir()

    def attempt(change: Callable[[], str]) -> None:
        try:
            done.append(f"fixed: {change()}")
        except EditRefused as exn:
            done.append(f"not changed: {exn}")
        except OSError as exn:
            done.append(f"not changed: {exn.filename}: {exn.strerror}")

    if "runtime" in actions:
        dropin = os.path.join(cfg_dir, "containers.conf.d", "50-miniwdl-podman.conf")
        attempt(lambda: write_dropin(dropin, {"engine": {"runtime": "runc"}}))
    if "storage" in actions:
        graph = os.path.join("/var/tmp" if os.access("/var/tmp", os.W_OK) else "/tmp",
                             f"containers-{uid}", "storage")  # fmt: skip
        if host.is_network_fs(host.fs_type(graph)):
            graph = os.path.join(tempfile.gettempdir(), f"containers-{uid}", "storage")
        os.makedirs(graph, mode=0o700, exist_ok=True)
        values: Dict[str, Dict[str, Any]] = {"storage": {"driver": "overlay", "graphroot": graph}}
        if not _kernel_at_least(5, 13) and shutil.which("fuse-overlayfs"):
            values["storage.options.overlay"] = {"mount_program": shutil.which("fuse-overlayfs")}
        attempt(lambda: update_toml(os.path.join(cfg_dir, "storage.conf"), values))
        if done[-1].startswith("fixed:"):
            done.append(f"fixed: container storage moved to {graph}: images will be pulled there")
    if "network" in actions:
        own = os.path.join(
            os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "miniwdl.cfg"
        )
        path = cfg_path or own
        if _users_own(path, uid):
            attempt(lambda: update_miniwdl_cfg(path, SECTION, "network", "none"))
        else:
            done.append(
                f"not changed: {path} is not yours (a site-wide miniwdl config); miniwdl reads"
                f" only the first config file it finds, so copy it to {own} and add"
                f" `[{SECTION}]` `network = none` there, or export"
                f" MINIWDL__{SECTION.upper()}__NETWORK=none"
            )
    if "leftovers" in actions and settings is not None:
        runtime = open_runtime(settings, logger, reap=False)
        try:
            n = runtime.engine.reap_dead_runs(logger)
            done.append(f"fixed: removed {n} containers left by dead runs")
        finally:
            runtime.close(logger)
    return done


def _users_own(path: str, uid: int) -> bool:
    """Whether ``path`` is the user's to edit: theirs and writable, or not there yet in a
    directory they may write."""
    if os.path.exists(path):
        return os.stat(path).st_uid == uid and os.access(path, os.W_OK)
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return bool(parent) and os.access(parent, os.W_OK)


def _kernel_at_least(major: int, minor: int) -> bool:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    if m is None:
        return False
    return (int(m.group(1)), int(m.group(2))) >= (major, minor)
