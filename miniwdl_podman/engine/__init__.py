"""The engine: the only package that talks to Podman (through podman-py).

One :class:`Engine` per process, split by concern the way podman-py splits its managers:

- :mod:`.connection`: which API service (the user's socket or a private one), its facts, the
  one shared client, request retries and recovery, error text;
- :mod:`.images`: pull once per process, inline Dockerfile builds, image probes;
- :mod:`.containers`: a ContainerSpec as libpod's create request, start, wait, kill, removal,
  and the reaping of containers that dead runs left;
- :mod:`.services`: the private API services (per run, or warm for the user's next run);
- :mod:`.processes`: the environment of the Podman processes the backend starts, and
  ``podman unshare``.

Every podman-py / requests exception is translated here into the types in
:mod:`miniwdl_podman.errors`, with the detail logged and the fix in the message. podman-py's
high-level ``containers.create`` re-inspects each new container and drops the create answer's
``Warnings``, and ``images.pull`` swallows pull errors (podman-py#301); so the hot or lossy
calls go through podman-py's ``APIClient`` to libpod's documented REST endpoints.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence

from ..podman_facts import PodmanFacts
from ..settings import Settings
from ..shared_store import SharedStore, Staged
from . import processes
from . import stage as stage_mod
from .connection import Connection, ping
from .containers import Containers, Running
from .images import INLINE_REPO, ImageRef, Images

__all__ = ["INLINE_REPO", "Engine", "ImageRef", "Running", "ping", "pool_size_for"]


def _no_lock(_image: str) -> ContextManager[object]:
    return contextlib.nullcontext()


class Engine:
    """The connection to one Podman API service and its managers, shared by a process's
    tasks: ``images``, ``containers``."""

    def __init__(
        self,
        settings: Settings,
        pool_size: int = 32,
        image_lock: Callable[[str], ContextManager[object]] = _no_lock,
        image_stores: Sequence[str] = (),
        shared: Callable[[str], Optional[Staged]] = lambda _name: None,
    ) -> None:
        self.settings = settings
        # image_stores: read-only stores the service is given (shared_store); shared: the image
        # a name stands for there
        self.connection = Connection(settings, pool_size, image_stores)
        self.containers = Containers(self.connection)
        # image_lock: held around a pull (the caller's cross-process lock)
        self.images = Images(self.connection, self.containers, image_lock, shared)

    def connect(self, logger: logging.Logger, cached_facts: bool = True) -> None:
        """Find the user's API socket or start a private service; read its facts (a warm
        service's from its cache while they hold, unless not ``cached_facts``)."""
        self.connection.connect(logger, cached_facts)

    @property
    def facts(self) -> PodmanFacts:
        return self.connection.facts

    @property
    def info(self) -> Dict[str, Any]:
        return self.connection.info

    @property
    def url(self) -> str:
        return self.connection.url

    @property
    def source(self) -> str:
        return self.connection.source

    def stage(self, image: str, shared: SharedStore, logger: logging.Logger) -> Staged:
        """``image`` in the shared image store: found there, or had and staged
        (:func:`.stage.stage`)."""
        return stage_mod.stage(self.connection, self.images, shared, image, logger)

    def unshare_chown(self, paths: List[str]) -> Optional[str]:
        """Give ``paths`` back to the invoking user (``podman unshare chown``); error or None."""
        return processes.unshare_chown(self.settings.podman, paths)

    def release_mounts(self, top: str) -> Optional[str]:
        """Unmount what Podman's storage left mounted under ``top`` in the user's rootless mount
        namespace once its service stopped (a store of this process alone); error or None."""
        return processes.unshare_release(self.settings.podman, top)

    def reap_dead_runs(self, logger: logging.Logger) -> int:
        """Remove the containers that dead miniwdl runs on this host left; how many."""
        return self.containers.reap_dead_runs(logger)

    def reap_dead_runs_soon(self, logger: logging.Logger) -> None:
        """The same, off the critical path (it touches only dead runs' containers); finished
        before this process exits."""
        self.containers.reap_dead_runs_soon(logger)

    def remove_leftovers(self, logger: logging.Logger) -> None:
        """At process exit: finish pending removals, then remove this process's containers."""
        self.containers.remove_leftovers(logger)

    def close(self) -> None:
        """Finish pending removals, close the client, stop a private service (idempotent)."""
        self.containers.close()
        self.connection.close()


def pool_size_for(task_concurrency: int) -> int:
    """Connections to keep: one blocking wait per running task, plus room for other calls."""
    return max(16, 2 * task_concurrency + 8)
