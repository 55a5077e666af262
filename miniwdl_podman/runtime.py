"""Runtime assembly: settings → a connected engine, the host's ids, a launcher, enforcement.

The one place that puts the parts together, used by every place that runs task containers:
the local backend's ``global_init``, the Slurm node helper and ``doctor`` (so doctor's test
container is planned and run by the same code as a task's, which is what its PASS claims).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, ContextManager, List, Mapping, Optional, Tuple

from . import budget, host, identity, launch, podman_facts
from .engine import Engine
from .settings import Settings
from .shared_store import SharedStore, Staged


@dataclass(frozen=True)
class Runtime:
    """Everything a task container needs that is set up once per process."""

    settings: Settings
    engine: Engine
    host: identity.HostIds
    launcher: launch.Launcher
    enforcement: podman_facts.Enforcement
    coordination_dir: Optional[str]

    def close(self, logger: logging.Logger) -> None:
        """Remove what this process left (pending removals, containers still registered),
        then close the connection and stop a private service (idempotent)."""
        self.engine.remove_leftovers(logger)
        self.engine.close()


def coordination_dir(settings: Settings) -> Optional[str]:
    """The user's private coordination directory (cross-process ledger, pull locks), made if
    needed; None with ``coordinate = false``."""
    if not settings.coordinate:
        return None
    return budget.ensure_private_dir(settings.coordination_dir or host.private_dir(os.geteuid()))


def shared_images(
    settings: Settings, pinned: Optional[Mapping[str, Staged]] = None
) -> Tuple[List[str], Callable[[str], Optional[Staged]]]:
    """The shared image stores a service is to read, and the image each name stands for there:
    the ``pinned`` images alone (a Slurm job: the login side chose them), else every store in
    ``shared_store`` as it is now (an image staged later is not seen by this process)."""
    if pinned is not None:
        return [p.store for p in pinned.values()], lambda name: pinned.get(name)
    if not settings.shared_store:
        return [], lambda _name: None
    shared = SharedStore(settings.shared_store)
    stores = shared.stores()
    readable = set(stores)

    def find(name: str) -> Optional[Staged]:
        staged = shared.find(name)
        return staged if staged is not None and staged.store in readable else None

    return stores, find


def open_runtime(
    settings: Settings,
    logger: logging.Logger,
    pool_size: int = 16,
    reap: bool = True,
    cached_facts: bool = True,
    pinned: Optional[Mapping[str, Staged]] = None,
    shared: bool = True,
) -> Runtime:
    """Connect to Podman (the user's socket or a private service) and assemble the runtime;
    with ``reap``, remove containers that dead runs on this host left (in the background: the
    first task need not wait for it; finished before the process exits); without
    ``cached_facts``, the service's facts are asked even where a cache holds them (doctor).
    The service reads the shared image stores (:func:`shared_images`) unless not ``shared``
    (the Slurm login side, which only stages into them)."""
    coordination = coordination_dir(settings)
    stores, find = shared_images(settings, pinned) if shared else ([], lambda _name: None)

    def image_lock(image: str) -> ContextManager[object]:
        if coordination is None:
            return contextlib.nullcontext()
        return budget.image_lock(coordination, image)

    engine = Engine(settings, pool_size, image_lock, stores, find)
    try:
        engine.connect(logger, cached_facts)
        if reap:
            engine.reap_dead_runs_soon(logger)
    except BaseException:
        engine.close()
        raise
    host = identity.host_ids(engine.info, os.geteuid(), os.getegid())
    return Runtime(
        settings=settings,
        engine=engine,
        host=host,
        launcher=launch.Launcher(engine, settings, host),
        enforcement=podman_facts.enforcement(engine.facts),
        coordination_dir=coordination,
    )
