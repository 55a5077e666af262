"""What ``miniwdl-podman doctor --fix`` does for the checks that name a fix action.

Only what a user can do without root, each file backed up first
(:mod:`~miniwdl_podman.configfiles`):

- ``runtime``: crun on a cgroup v1 host → ``runtime = "runc"`` in containers.conf;
- ``storage``: storage on a network file system, on tmpfs, or the vfs driver → a node-local
  graphroot with the overlay driver in storage.conf (a fresh store; the old one is left alone);
- ``network``: /dev/net/tun unusable → ``[podman_rootless] network = none`` in the miniwdl
  config;
- ``leftovers``: containers left by dead miniwdl runs → removed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from typing import Any, Dict, List, Optional

from . import host
from .configfiles import containers_config_dir, update_miniwdl_cfg, update_toml
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
    if "runtime" in actions:
        done.append(
            update_toml(os.path.join(cfg_dir, "containers.conf"), {"engine": {"runtime": "runc"}})
        )
    if "storage" in actions:
        graph = os.path.join("/var/tmp" if os.access("/var/tmp", os.W_OK) else "/tmp",
                             f"containers-{uid}", "storage")  # fmt: skip
        if host.is_network_fs(host.fs_type(graph)):
            graph = os.path.join(tempfile.gettempdir(), f"containers-{uid}", "storage")
        os.makedirs(graph, mode=0o700, exist_ok=True)
        values: Dict[str, Dict[str, Any]] = {"storage": {"driver": "overlay", "graphroot": graph}}
        if not _kernel_at_least(5, 13) and shutil.which("fuse-overlayfs"):
            values["storage.options.overlay"] = {"mount_program": shutil.which("fuse-overlayfs")}
        done.append(update_toml(os.path.join(cfg_dir, "storage.conf"), values))
        done.append(f"container storage moved to {graph}: images will be pulled again there")
    if "network" in actions:
        path = cfg_path or os.path.join(
            os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "miniwdl.cfg"
        )
        done.append(update_miniwdl_cfg(path, SECTION, "network", "none"))
    if "leftovers" in actions and settings is not None:
        runtime = open_runtime(settings, logger, reap=False)
        try:
            n = runtime.engine.reap_dead_runs(logger)
            done.append(f"removed {n} containers left by dead runs")
        finally:
            runtime.close(logger)
    return done


def _kernel_at_least(major: int, minor: int) -> bool:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    if m is None:
        return False
    return (int(m.group(1)), int(m.group(2))) >= (major, minor)
