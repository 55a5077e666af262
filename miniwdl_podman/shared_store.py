"""The shared read-only image store (``[podman_rootless] shared_store``): its layout on disk,
the name index, and the rules that keep it whole. No Podman here: the engine's
:mod:`~miniwdl_podman.engine.stage` fills a staging directory, this module makes it
visible.

Layout, under the shared directory::

    images/<image id>/store/      a containers-storage root holding that one image, without any
                                  name (Podman's names live in our index, so a name staged twice
                                  can never be a duplicate inside a store Podman reads)
    images/<image id>/image.json  what it is: id, digest, the names staged as, when, by whom
    names/<sha256 of name>.json   name → image id and digest (replaced atomically: a moved tag
                                  points to the new image; the old one stays for runs pinned to it)
    staging/<image id>.<random>/  a staging in progress, with its ``lock`` held by the stager
    staging/.trash-*/             a killed staging's remains, being removed
    locks/<image id>.lock         one staging of an image at a time

A staging becomes visible by one ``rename`` of its finished directory into ``images/``, so a
store is never seen half-written; a staging that was killed leaves only its directory under
``staging/``, which nothing reads and the next staging sweeps (once its lock is free). Each
store is given to Podman as an additional image store (``overlay.imagestore``): read-only,
shared by every node, with node storage holding only the containers' own layers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

from .host import locked, write_json_atomic

FORMAT = 1
_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Staged:
    """One image in the shared store: its id, manifest digest (may be empty) and the
    containers-storage root that holds it."""

    id: str
    digest: str
    store: str


class SharedStore:
    """One shared image store directory."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))

    # -- reading -------------------------------------------------------------------------------

    def _image_dir(self, image_id: str) -> str:
        return os.path.join(self.root, "images", image_id)

    def by_id(self, image_id: str) -> Optional[Staged]:
        """The staged image with this id (full 64 hex digits), or None."""
        image_id = image_id.split(":")[-1]
        if not _ID.match(image_id):
            return None
        meta = _read_json(os.path.join(self._image_dir(image_id), "image.json"))
        if meta.get("id") != image_id:
            return None
        return Staged(image_id, str(meta.get("digest") or ""), self.store_of(image_id))

    def find(self, name: str) -> Optional[Staged]:
        """The image staged under ``name`` (as a task's runtime names it), or None."""
        entry = _read_json(self._name_path(name))
        if entry.get("name") != name:
            return None
        found = self.by_id(str(entry.get("id") or ""))
        return found

    def reusable(self, name: str, pull: str) -> Optional[Staged]:
        """The image staged under ``name``, to use as it is: None with ``pull = always`` (the
        name is fetched and staged again) or when nothing is staged under it."""
        return None if pull == "always" else self.find(name)

    def store_of(self, image_id: str) -> str:
        return os.path.join(self._image_dir(image_id), "store")

    def stores(self) -> List[str]:
        """Every complete store, oldest first (what a service is given to read)."""
        base = os.path.join(self.root, "images")
        try:
            names = os.listdir(base)
        except OSError:
            return []
        found = [(self._mtime(n), n) for n in names if _ID.match(n) and self.by_id(n)]
        return [self.store_of(n) for _t, n in sorted(found)]

    def _mtime(self, image_id: str) -> float:
        try:
            return os.stat(os.path.join(self._image_dir(image_id), "image.json")).st_mtime
        except OSError:
            return 0.0

    def _name_path(self, name: str) -> str:
        digest = hashlib.sha256(name.encode()).hexdigest()
        return os.path.join(self.root, "names", f"{digest}.json")

    # -- writing -------------------------------------------------------------------------------

    def record_name(self, name: str, staged: Staged) -> None:
        """Point ``name`` at ``staged`` (an atomic replace of the index entry)."""
        os.makedirs(os.path.join(self.root, "names"), exist_ok=True)
        write_json_atomic(
            self._name_path(name),
            {"format": FORMAT, "name": name, "id": staged.id, "digest": staged.digest,
             "recorded": time.time()},
        )  # fmt: skip

    @contextlib.contextmanager
    def staging(self, image_id: str) -> Iterator[Optional[str]]:
        """Hold the image's staging lock; yield a fresh staging directory, or None when the image
        is already staged (by another run, perhaps while this one waited for the lock)."""
        for sub in ("images", "names", "staging", "locks"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        with locked(os.path.join(self.root, "locks", f"{image_id}.lock"), 0o644):
            if self.by_id(image_id) is not None:
                yield None
                return
            work = tempfile.mkdtemp(prefix=f"{image_id}.", dir=os.path.join(self.root, "staging"))
            with locked(os.path.join(work, "lock"), 0o644):
                yield work

    def commit(self, work: str, image_id: str, digest: str, names: List[str]) -> Staged:
        """Make a finished staging directory (``work/store`` filled) visible as the image's
        store: describe it, then one rename. Called inside :meth:`staging`."""
        meta = {"format": FORMAT, "id": image_id, "digest": digest, "names": names,
                "staged": time.time(), "by": f"{_user()}@{socket.gethostname()}"}  # fmt: skip
        write_json_atomic(os.path.join(work, "image.json"), meta)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(work, "lock"))  # the stager still holds it open
        os.rename(work, self._image_dir(image_id))
        return Staged(image_id, digest, self.store_of(image_id))

    def abandoned(self) -> List[str]:
        """Staging directories whose stager is gone (their lock is free: a killed staging),
        each first renamed to ``staging/.trash-*`` (so that a removal cut short leaves only
        trash); with the trash that earlier removals left. The paths to remove."""
        base = os.path.join(self.root, "staging")
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return []
        ans = []
        for name in names:
            path = os.path.join(base, name)
            if name.startswith(".trash-"):
                ans.append(path)
                continue
            try:
                fd = os.open(os.path.join(path, "lock"), os.O_RDWR)
            except OSError:
                continue  # not a staging directory, or one not yet locked
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a staging in progress
            else:
                trash = os.path.join(base, f".trash-{name}")
                with contextlib.suppress(OSError):
                    os.rename(path, trash)
                    ans.append(trash)
            finally:
                os.close(fd)
        return ans


# storage drivers that take additional image stores (``<driver>.imagestore``)
IMAGE_STORE_DRIVERS = ("overlay", "vfs")


def storage_options(driver: str, graph_options: Dict[str, Any], stores: List[str]) -> List[str]:
    """Podman's global ``--storage-opt`` arguments that keep the user's own driver options (as
    Podman reports them: ``--storage-opt`` replaces them all) and add each store as an additional
    image store. A mount program is reported as a table; its ``Executable`` is the option."""
    args: List[str] = []
    for key, value in sorted(graph_options.items()):
        if isinstance(value, dict):
            value = value.get("Executable") or value.get("executable") or ""
        if value in (None, ""):
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        args += ["--storage-opt", f"{key}={text}"]
    for store in stores:
        args += ["--storage-opt", f"{driver}.imagestore={store}"]
    return args


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            raw = json.load(f)
        return raw if isinstance(raw, dict) else {}
    except (OSError, ValueError):
        return {}


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
