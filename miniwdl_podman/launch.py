"""One code path from a task's plan to its finished container, wherever the container runs.

The local backend calls :class:`Launcher` in miniwdl's own process; the Slurm backend's node
helper (:mod:`~miniwdl_podman.node`) calls it on the compute node with the same
:class:`~miniwdl_podman.plan.TaskPlan`, read back from JSON. Either way it gets the image (pull,
or build an inline Dockerfile) and its facts (once per image per process), checks the GPU
devices, resolves the plan into a :class:`~miniwdl_podman.spec.ContainerSpec` (pure:
:func:`~miniwdl_podman.spec.resolve`) and starts it through the
:class:`~miniwdl_podman.engine.Engine`, giving back a :class:`TaskRun` that the caller polls
(usage is sampled as it does); afterwards it gives back files the task left owned by other
uids. What it decides is decided from the plan
and the image alone, so what runs on a compute node is exactly what would have run locally.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Dict, List, Optional, Tuple

from WDL._util import StructuredLogMessage as _

from . import gpu, identity, ownership, staging, usage
from . import spec as spec_mod
from ._logging import notice
from ._once import Once
from .engine import Engine, ImageRef, Running
from .errors import BackendError
from .exits import Outcome
from .plan import TaskPlan
from .settings import Settings


class Launcher:
    """Runs task plans on one engine; resolves each image's identity once per process."""

    def __init__(self, engine: Engine, settings: Settings, host: identity.HostIds) -> None:
        self.engine = engine
        self.settings = settings
        self.host = host
        self._image_facts: Once[spec_mod.ImageFacts] = Once()

    def image(self, plan: TaskPlan, logger: logging.Logger) -> ImageRef:
        """The plan's image in the local store: pulled, or built from the inline Dockerfile."""
        if plan.inline_dockerfile:
            return self.engine.images.build(
                plan.inline_dockerfile, os.path.join(plan.task_dir, "inlineDockerfile.log"), logger
            )
        return self.engine.images.ensure(plan.image, logger)

    def image_facts(self, plan: TaskPlan, logger: logging.Logger) -> spec_mod.ImageFacts:
        """The plan's image in the local store and the facts about it that the task's identity
        depends on, worked out once per image per process (a probe container, when the image
        runs as a non-root user)."""
        ref = self.image(plan, logger)
        engine, settings, host = self.engine, self.settings, self.host

        def probe() -> spec_mod.ImageFacts:
            user = identity.ImageUser(spec=ref.user, resolved=False)
            home_exists = None
            if not (user.is_root or settings.as_user or host.single_uid):
                with engine.images.probe(ref.id, logger) as container:
                    user = identity.resolve_image_user(
                        plan.image_label,
                        ref.user,
                        container.read("/etc/passwd"),
                        container.read("/etc/group"),
                    )
                    if user.home and user.home != "/":
                        home_exists = container.exists(user.home)
            return spec_mod.ImageFacts(ref.id, user, home_exists, ref.digest)

        return self._image_facts.get(ref.id, probe)[0]

    def spec(
        self,
        plan: TaskPlan,
        facts: spec_mod.ImageFacts,
        logger: logging.Logger,
        aliases: Optional[Dict[str, str]] = None,
    ) -> Tuple[spec_mod.ContainerSpec, identity.Identity]:
        """Resolve identity and devices against the image's facts, and compute the container
        spec."""
        devices = gpu.gpu_devices(self.settings) if plan.gpu else []
        spec, ident = spec_mod.resolve(plan, facts, self.host, self.settings, devices, aliases)
        logger.info(
            _(
                "task identity",
                image=plan.image_label,
                image_user=facts.user.spec,
                mode=ident.mode,
                userns=ident.userns or "rootless default (container root = you)",
                user=ident.user,
                home=ident.home,
            )
        )
        logger.info(
            _(
                "podman container spec",
                name=spec.name,
                image=plan.image_label,
                identity=ident.mode,
                user=ident.user,
                mounts=len(spec.mounts),
                network=spec.network or "default",
                security_opt=spec.security_opt,
                limits=spec.limits,
                devices=spec.devices,
            )
        )
        return spec, ident

    def start(self, plan: TaskPlan, logger: logging.Logger) -> TaskRun:
        """Start the plan's container: a :class:`TaskRun` the caller polls and closes. Paths
        the API cannot carry are staged or aliased first (:mod:`~miniwdl_podman.staging`) and
        put back when the run is closed."""
        prepared = staging.prepare(plan, logger)
        try:
            t0 = time.monotonic()
            facts = self.image_facts(plan, logger)
            image_seconds = time.monotonic() - t0
            # the image this task runs, for the record: every task of the process that names
            # the same image runs the same one (resolved once; the container is made from its
            # id, so a tag moved meanwhile changes nothing)
            notice(
                logger,
                _("task image", image=plan.image_label, id=facts.id[:12], digest=facts.digest),
            )
            spec, _ident = self.spec(plan, facts, logger, prepared.aliases)
            run = TaskRun(self.engine.containers.start(spec, logger), prepared, facts)
            run.image_seconds = image_seconds
            return run
        except BaseException:
            prepared.close()
            raise

    def settle_ownership(self, roots: List[str], logger: logging.Logger) -> None:
        """Give back files the task left owned by other uids, or fail naming them.

        Always, whatever ``[file_io] chown`` says: miniwdl itself chmods the whole run directory
        after a task and fails with a traceback on any file the user does not own.
        """
        foreign = ownership.foreign_paths(roots, os.geteuid(), os.getegid())
        if not foreign:
            return
        error = self.engine.unshare_chown(foreign)
        still = ownership.foreign_paths(foreign, os.geteuid(), os.getegid())
        if still:
            raise BackendError(
                f"the task left {len(still)} files owned by other users"
                f" ({ownership.describe(still)}) that could not be given back to you:"
                f" {error or 'unknown error'}; remove them with `podman unshare rm -rf PATH`"
            )
        logger.warning(
            _(
                "task left files owned by other users (e.g. chown or tar -x as container root);"
                " gave them back to you with `podman unshare chown`",
                count=len(foreign),
                files=ownership.describe(foreign),
            )
        )


class TaskRun:
    """A task's running container, sampled for usage while the caller waits on it; a context
    manager (closing removes the container)."""

    def __init__(
        self, container: Running, prepared: staging.Prepared, image: spec_mod.ImageFacts
    ) -> None:
        self.container = container
        self.prepared = prepared
        self.image = image  # what the container runs
        self.image_seconds = 0.0  # getting it (pull, build, probe; 0: this process had it)
        self._t0 = time.monotonic()
        self._pid = -1
        self._tracker = usage.UsageTracker()

    def wait(self, timeout: Optional[float]) -> Optional[Outcome]:
        """The task's :class:`~miniwdl_podman.exits.Outcome` once its container has ended, None
        while it still runs after ``timeout`` seconds. Usage is sampled at each call from the
        first second on (a task that ends sooner costs no inspect call)."""
        ended = self.container.wait(timeout)
        if ended is not None:
            tracker = self._tracker
            return Outcome(ended, tracker.peak_rss, tracker.cpu_seconds, tracker.samples)
        if time.monotonic() - self._t0 >= 0.9:
            if self._pid < 0:
                self._pid = self.container.pid()
            if self._pid:
                self._tracker.add(usage.sample_tree(self._pid))
        return None

    def kill(self) -> None:
        """Kill the container (miniwdl is terminating)."""
        self.container.kill()

    def __enter__(self) -> TaskRun:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.container.__exit__(*exc)
        finally:
            self.prepared.close()
