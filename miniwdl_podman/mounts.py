"""Mount planning: which host paths the task's container sees, where, and how.

Pure functions only (no Podman, no file system writes). Inputs are mounted in situ and
read-only at the container paths miniwdl chose (``input_path_map``); the task's work directory,
``stdout.txt`` and ``stderr.txt`` read-write; the command script read-only; exactly as miniwdl's
other backends lay out ``/mnt/miniwdl_task_container``. Mounts are structured (source and target
are separate JSON strings), so ``:``, ``,``, ``=`` and spaces in paths need no escaping. A path
that Podman cannot carry (one with a newline, a NUL or bytes that are not UTF-8) is refused
here, before any container exists, with the path named.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Mapping, Optional, Tuple

from WDL import Error


@dataclass(frozen=True)
class Mount:
    """One mount into the container: a bind of a host path, or a private tmpfs."""

    source: str
    target: str
    read_only: bool
    relabel: Optional[str] = None  # SELinux: "z" (shared) or "Z" (private); None: no relabel
    kind: str = "bind"  # bind | tmpfs


def selinux_options(mode: str) -> Tuple[List[str], Optional[str]]:
    """(security_opt, relabel for the mounts the backend owns) for ``[podman_rootless] selinux``.

    - ``disable`` (default): the container runs with SELinux labelling disabled (libpod's
      spelling through the API is ``disable``, not the CLI's ``label=disable``) and nothing is
      relabelled, so shared inputs are never touched and are readable on an enforcing host.
    - ``shared`` / ``private``: the container is confined; only what the backend owns (the
      task's work dir, stdout/stderr, command) is relabelled ``z`` / ``Z``. Inputs are never
      relabelled, so on an enforcing host they must already carry a label containers may read
      (e.g. ``container_file_t``).
    - ``none``: Podman's defaults: confined, no relabelling at all.
    """
    if mode == "disable":
        return ["disable"], None
    if mode == "shared":
        return [], "z"
    if mode == "private":
        return [], "Z"
    if mode == "none":
        return [], None
    raise ValueError(f"unknown selinux mode {mode!r}")


def selinux_enforcing(path: str = "/sys/fs/selinux/enforce") -> bool:
    """Whether SELinux is enforcing on this host."""
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def check_path(path: str) -> None:
    """Refuse a path that a mount specification cannot carry, naming it."""
    bad = "\n" in path or "\r" in path or "\0" in path
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        bad = True
    if bad:
        raise Error.InputError(
            "path cannot be mounted into a Podman container (it contains a newline, NUL or"
            f" non-UTF-8 bytes); rename it: {path!r}"
        )


@dataclass(frozen=True)
class TaskPaths:
    """Where miniwdl keeps one attempt of a task on the host, and where the container sees it."""

    container_dir: str
    host_work_dir: str
    host_stdout: str
    host_stderr: str
    host_command: str


def task_mounts(
    paths: TaskPaths,
    input_path_map: Mapping[str, str],
    bind_inputs: bool = True,
    relabel: Optional[str] = None,
    tmpfs: Optional[str] = None,
) -> List[Mount]:
    """The task container's bind mounts, in the order Podman should make them.

    ``input_path_map`` maps host input paths to container paths (directories with a trailing
    slash on both sides), as miniwdl's ``TaskContainer.add_paths`` maintains it. With
    ``bind_inputs`` false (``[file_io] copy_input_files``), the inputs were copied into the work
    directory and are not mounted separately. ``relabel`` (SELinux ``z``/``Z``) applies only to
    the mounts the backend owns, never to inputs. ``tmpfs``: a path to give a private tmpfs.
    """
    cdir = paths.container_dir
    ans = [
        Mount(paths.host_command, os.path.join(cdir, "command"), True, relabel),
        Mount(paths.host_stdout, os.path.join(cdir, "stdout.txt"), False, relabel),
        Mount(paths.host_stderr, os.path.join(cdir, "stderr.txt"), False, relabel),
        Mount(paths.host_work_dir, os.path.join(cdir, "work"), False, relabel),
    ]
    if bind_inputs:
        # parents before children, so an input nested in another input's directory stays visible
        for host_path, container_path in sorted(
            input_path_map.items(), key=lambda kv: kv[1].rstrip("/")
        ):
            ans.append(Mount(host_path.rstrip("/"), container_path.rstrip("/"), read_only=True))
    for m in ans:
        check_path(m.source)
        check_path(m.target)
    if tmpfs:
        ans.append(Mount("tmpfs", tmpfs, read_only=False, kind="tmpfs"))
    return ans
