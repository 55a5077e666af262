"""Host-side preparation of the paths a task's container needs that the Podman API cannot carry.

Just before the container is created, and undone once it has ended (:class:`Prepared`):

- each :class:`~miniwdl_podman.mounts.Staged` input is put at its place in the work dir under
  its exact name, inside the directory that is mounted read-only: a hard link (for a Directory,
  a tree of directories and hard links), or a copy where the file system refuses a link
  (another file system; ``fs.protected_hardlinks`` on a file of another user). The input itself
  is never written: a link only adds a name to it for the task's run (its link count and ctime
  change meanwhile), and the name is removed afterwards, before miniwdl touches the work dir;
- each mount source the API cannot carry (bytes that are not UTF-8, control characters: in the
  run directory's own path, or in an input's directory) is given an alias, a symlink with a
  plain name in a private temporary directory, which the kernel follows when it mounts.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
from typing import Dict, List

from WDL._util import StructuredLogMessage as _

from .errors import BackendError
from .mounts import Staged, api_safe
from .plan import TaskPlan


class Prepared:
    """What was made for one container: the aliases of its mount sources (source → alias) and
    the staged inputs; :meth:`close` removes them (idempotent)."""

    def __init__(self) -> None:
        self.aliases: Dict[str, str] = {}
        self.staged: List[Staged] = []
        self.copied_bytes = 0
        self._alias_dir = ""

    def alias(self, source: str) -> str:
        """A plain path that leads to ``source``."""
        if source not in self.aliases:
            if not self._alias_dir:
                self._alias_dir = tempfile.mkdtemp(prefix="miniwdl-podman-paths-")
            alias = os.path.join(self._alias_dir, str(len(self.aliases)))
            os.symlink(source, alias)
            self.aliases[source] = alias
        return self.aliases[source]

    def close(self) -> None:
        for item in reversed(self.staged):
            try:
                if item.directory and not os.path.islink(item.host_path):
                    shutil.rmtree(item.host_path)
                else:
                    os.unlink(item.host_path)
            except FileNotFoundError:
                pass
        self.staged = []
        if self._alias_dir:
            shutil.rmtree(self._alias_dir, ignore_errors=True)
            self._alias_dir = ""


def _link_or_copy(source: str, dest: str, prepared: Prepared) -> None:
    """Hard-link the regular file ``source`` at ``dest``, or copy it (contents, mode, times)."""
    try:
        os.link(source, dest, follow_symlinks=True)
    except OSError:
        shutil.copy2(source, dest)
        prepared.copied_bytes += os.stat(dest).st_size


def _stage_tree(source: str, dest: str, prepared: Prepared) -> None:
    """``dest``: the directory ``source`` again, of new directories and hard links (or copies);
    symlinks inside it stay symlinks, as the task would see them in the directory itself."""
    os.mkdir(dest)
    for entry in os.scandir(source):
        target = os.path.join(dest, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            _stage_tree(entry.path, target, prepared)
        elif entry.is_file():
            _link_or_copy(entry.path, target, prepared)
        # sockets, fifos and devices inside an input directory are not staged
    shutil.copystat(source, dest, follow_symlinks=False)


def _clear_placeholder(path: str) -> None:
    """Remove the empty mount point miniwdl's layout made at ``path`` (nothing else)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        os.rmdir(path)  # fails if not empty: never removes anything but a mount point
    elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
        os.unlink(path)
    else:
        raise FileExistsError(
            errno.EEXIST, "something other than an empty mount point is here", path
        )


def prepare(plan: TaskPlan, logger: logging.Logger) -> Prepared:
    """Stage the plan's inputs and alias its mount sources; a :class:`Prepared` to close once
    the container has ended."""
    prepared = Prepared()
    try:
        for item in plan.staged:
            _clear_placeholder(item.host_path)
            prepared.staged.append(item)
            if item.directory:
                _stage_tree(os.path.realpath(item.source), item.host_path, prepared)
            else:
                _link_or_copy(item.source, item.host_path, prepared)
        for mount in plan.mounts:
            if mount.kind == "bind" and not api_safe(mount.source):
                prepared.alias(mount.source)
    except OSError as exn:
        prepared.close()
        logger.error(_("staging failed", error=repr(exn)))
        raise BackendError(
            f"cannot prepare an input whose name the Podman API cannot carry: {exn.strerror or exn}"
            f" ({exn.filename!r}); free space in the run directory, or rename the input"
        ) from None
    if plan.staged:
        logger.info(
            _(
                "inputs staged under their exact names (the Podman API cannot carry them)",
                inputs=len(plan.staged),
                copied_bytes=prepared.copied_bytes,
            )
        )
    if prepared.aliases:
        logger.info(_("mount sources aliased (the Podman API cannot carry their paths)",
                      count=len(prepared.aliases)))  # fmt: skip
    return prepared
