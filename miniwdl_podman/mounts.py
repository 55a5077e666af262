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
from typing import Dict, List, Mapping

from WDL import Error


@dataclass(frozen=True)
class Mount:
    """One bind mount of a host path into the container."""

    source: str
    target: str
    read_only: bool

    def as_podman(self) -> Dict[str, object]:
        """The podman-py ``mounts=[...]`` form (sent to libpod as options ``["ro"]`` or ``[]``)."""
        ans: Dict[str, object] = {"type": "bind", "source": self.source, "target": self.target}
        if self.read_only:
            ans["read_only"] = True
        return ans


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


def plan(
    paths: TaskPaths, input_path_map: Mapping[str, str], bind_inputs: bool = True
) -> List[Mount]:
    """The task container's bind mounts, in the order Podman should make them.

    ``input_path_map`` maps host input paths to container paths (directories with a trailing
    slash on both sides), as miniwdl's ``TaskContainer.add_paths`` maintains it. With
    ``bind_inputs`` false (``[file_io] copy_input_files``), the inputs were copied into the work
    directory and are not mounted separately.
    """
    cdir = paths.container_dir
    ans = [
        Mount(paths.host_command, os.path.join(cdir, "command"), read_only=True),
        Mount(paths.host_stdout, os.path.join(cdir, "stdout.txt"), read_only=False),
        Mount(paths.host_stderr, os.path.join(cdir, "stderr.txt"), read_only=False),
        Mount(paths.host_work_dir, os.path.join(cdir, "work"), read_only=False),
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
    return ans
