"""Mount planning: which host paths the task's container sees, where, and how.

Pure functions only (no Podman, no file system writes). Inputs are mounted in situ and
read-only at the container paths miniwdl chose (``input_path_map``); the task's work directory,
``stdout.txt`` and ``stderr.txt`` read-write; the command script read-only; exactly as miniwdl's
other backends lay out ``/mnt/miniwdl_task_container``. Mounts are structured (source and target
are separate JSON strings), so ``:``, ``,``, ``=`` and spaces in paths need no escaping.

A POSIX file name may hold every byte but ``/`` and NUL; the API cannot carry all of them (JSON
strings are Unicode: bytes that are not UTF-8 cannot travel, and control characters are not
trusted to). Such names are planned around, never refused and never renamed (:func:`api_safe`
tells them apart):

- a *source* (host path) that the API cannot carry is given a safe alias, a symlink made just
  before the container starts (:mod:`~miniwdl_podman.staging`): the kernel follows it when it
  mounts, so the container sees the real file;
- a *target* (an input's container path, whose last part is the input's own name) that the API
  cannot carry is :class:`Staged`: its directory ``_miniwdl_inputs/N`` (a safe name) is mounted
  read-only from the work dir, where the input is put under its exact name (a hard link, or a
  copy across file systems) for the task's run; the other inputs of that directory are mounted
  on top of it as usual.
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


def api_safe(path: str) -> bool:
    """Whether the Podman API carries ``path`` byte for byte: UTF-8 (no bytes that Python
    decoded as surrogates) without control characters."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Staged:
    """An input whose container path the API cannot carry: for the task's run its content is
    put at ``host_path`` (its container path, in the host work dir: a directory mounted
    read-only), under its exact name."""

    source: str  # the input on the host
    host_path: str
    directory: bool


@dataclass(frozen=True)
class TaskPaths:
    """Where miniwdl keeps one attempt of a task on the host, and where the container sees it."""

    container_dir: str
    host_work_dir: str
    host_stdout: str
    host_stderr: str
    host_command: str


def _host_work_path(paths: TaskPaths, container_path: str) -> str:
    """Where the container path (under the work dir) lies in the host work dir."""
    work = os.path.join(paths.container_dir, "work")
    assert container_path.startswith(work + "/"), container_path
    return paths.host_work_dir + container_path[len(work) :]


def staged_inputs(paths: TaskPaths, input_path_map: Mapping[str, str]) -> List[Staged]:
    """The inputs to stage (their container paths hold what the API cannot carry)."""
    return [
        Staged(host.rstrip("/"), _host_work_path(paths, target.rstrip("/")), host.endswith("/"))
        for host, target in sorted(input_path_map.items(), key=lambda kv: kv[1])
        if not api_safe(target.rstrip("/"))
    ]


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
    Inputs whose container path the API cannot carry are :func:`staged_inputs`: their
    directory is mounted read-only from the work dir instead.
    """
    cdir = paths.container_dir
    ans = [
        Mount(paths.host_command, os.path.join(cdir, "command"), True, relabel),
        Mount(paths.host_stdout, os.path.join(cdir, "stdout.txt"), False, relabel),
        Mount(paths.host_stderr, os.path.join(cdir, "stderr.txt"), False, relabel),
        Mount(paths.host_work_dir, os.path.join(cdir, "work"), False, relabel),
    ]
    if bind_inputs:
        inputs = [
            Mount(host_path.rstrip("/"), container_path.rstrip("/"), read_only=True)
            for host_path, container_path in input_path_map.items()
            if api_safe(container_path.rstrip("/"))
        ]
        staged_dirs = {os.path.dirname(s.host_path) for s in staged_inputs(paths, input_path_map)}
        for host_dir in sorted(staged_dirs):
            target = os.path.join(cdir, "work") + host_dir[len(paths.host_work_dir) :]
            if not api_safe(target):
                raise Error.InputError(f"cannot mount the inputs' directory {target!r}")
            inputs.append(Mount(host_dir, target, read_only=True))
        # parents before children, so an input nested in another input's directory stays visible
        ans += sorted(inputs, key=lambda m: m.target)
    if tmpfs:
        ans.append(Mount("tmpfs", tmpfs, read_only=False, kind="tmpfs"))
    return ans
