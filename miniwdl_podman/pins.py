"""One image per tag per run on Slurm (``pin_digests``): the pin files of a run.

Each Slurm job resolves its image on its own node; a tag that moves mid-run would give two
tasks of one scatter different images. So the first job of a run to need a tag resolves it
(pull or local store, as always) and records the digest it got in the run's pin directory
(on the shared file system, beside the task directories); every later job of the run, on any
node, uses ``repository@digest`` instead of the tag. Who resolves is settled by an exclusive
create of a claim file (no ``flock``: Lustre mounts often refuse it); the claimant refreshes
its claim while it pulls, and a claim left unrefreshed for :data:`STALE` seconds (its job was
killed) is taken over. A claimant that fails removes its claim, so the next job tries itself.
File-system work only: the resolving itself is the caller's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
from typing import Callable, Optional, Sequence

from WDL._util import StructuredLogMessage as _
from WDL.runtime.error import Terminated

from . import images as references
from .host import write_json_atomic

STALE = 60.0  # seconds without a refresh after which a claim is a dead job's
_REFRESH = 5.0


def pinned_reference(name: str, digest: str) -> str:
    """``name`` with its tag replaced by ``digest`` (qualified as a pull would be):
    ``quay.io/org/tool:1.2`` + ``sha256:…`` → ``quay.io/org/tool@sha256:…``."""
    full = references.qualify(name)
    repo = full.split("@", 1)[0]
    last = repo.rsplit("/", 1)
    if ":" in last[-1]:
        repo = repo[: repo.rindex(":")]
    return f"{repo}@{digest}"


def digest_for(name: str, repo_digests: Sequence[str], fallback: str) -> str:
    """The digest to pin ``name`` to: the one the store lists for ``name``'s own repository (an
    image known under several repositories has a digest for each; a pull by another's fails),
    else ``fallback`` (the image's digest)."""
    repo = pinned_reference(name, "x").rsplit("@", 1)[0]
    for entry in repo_digests:
        where, _, digest = entry.rpartition("@")
        if where == repo and digest:
            return digest
    return fallback


def pinnable(name: str) -> bool:
    """Whether a tag can be pinned: a name with a registry to pull a digest from, not already
    a digest reference (``localhost/`` names exist only in the store that has them)."""
    return bool(name) and "@" not in name and not name.startswith("localhost/")


class RunPins:
    """The pin directory of one run."""

    def __init__(self, directory: str, stale: float = STALE) -> None:
        self.directory = directory
        self.stale = stale

    def _path(self, name: str, kind: str) -> str:
        return os.path.join(self.directory, hashlib.sha256(name.encode()).hexdigest() + kind)

    def recorded(self, name: str) -> Optional[str]:
        """The digest recorded for ``name`` (``""``: resolved without one), or None."""
        try:
            with open(self._path(name, ".json")) as f:
                raw = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict) or raw.get("name") != name:
            return None
        return str(raw.get("digest") or "")

    def resolve(
        self,
        name: str,
        fetch: Callable[[], str],
        logger: logging.Logger,
        give_up: Callable[[], bool] = lambda: False,
    ) -> str:
        """The reference this job uses for ``name``: ``repository@digest`` as the run's first
        job recorded it, or ``name`` itself when this job is the first (``fetch`` resolves it
        and returns the digest it got, "" if none) or no digest could be recorded."""
        os.makedirs(self.directory, exist_ok=True)
        while True:
            digest = self.recorded(name)
            if digest is not None:
                if not digest:
                    return name
                ref = pinned_reference(name, digest)
                logger.info(_("image pinned for the run", image=name, reference=ref))
                return ref
            if self._claim(name):
                if self.recorded(name) is not None:  # recorded by a claimant since taken over
                    with contextlib.suppress(OSError):
                        os.unlink(self._path(name, ".claim"))
                    continue
                return self._resolve_as_claimant(name, fetch, logger)
            if give_up():
                raise Terminated()
            time.sleep(0.5)

    def _claim(self, name: str) -> bool:
        claim = self._path(name, ".claim")
        with contextlib.suppress(OSError):
            if time.time() - os.stat(claim).st_mtime > self.stale:
                # its job died without finishing or removing it: take it over
                os.unlink(claim)
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()} {os.environ.get('SLURM_JOB_ID', '')}")
        return True

    def _resolve_as_claimant(
        self, name: str, fetch: Callable[[], str], logger: logging.Logger
    ) -> str:
        claim = self._path(name, ".claim")
        done = threading.Event()

        def refresh() -> None:
            while not done.wait(_REFRESH):
                with contextlib.suppress(OSError):
                    os.utime(claim)

        keeper = threading.Thread(target=refresh, daemon=True)
        keeper.start()
        try:
            digest = fetch()
            write_json_atomic(
                self._path(name, ".json"),
                {"name": name, "digest": digest, "by": os.environ.get("SLURM_JOB_ID", ""),
                 "at": time.time()},
            )  # fmt: skip
            logger.info(_("image pinned for the run by this job", image=name, digest=digest))
            return name
        finally:
            done.set()
            keeper.join()
            with contextlib.suppress(OSError):
                os.unlink(claim)
