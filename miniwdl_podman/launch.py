"""One code path from a task's plan to its finished container, wherever the container runs.

The local backend calls :class:`Launcher` in miniwdl's own process; the Slurm backend's node
helper (:mod:`~miniwdl_podman.node`) calls it on the compute node with the same
:class:`~miniwdl_podman.plan.TaskPlan`, read back from JSON. Either way it resolves the image
(pull, or build an inline Dockerfile) and the task's identity for that image (once per image per
process), checks the GPU devices, builds the :class:`~miniwdl_podman.spec.ContainerSpec`, runs
it through the :class:`~miniwdl_podman.engine.Engine` while sampling its usage, and afterwards
gives back files the task left owned by other uids. What it decides is decided from the plan
and the image alone, so what runs on a compute node is exactly what would have run locally.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from WDL._util import StructuredLogMessage as _

from . import identity, ownership, resources, usage
from . import spec as spec_mod
from ._logging import notice
from ._once import Once
from .engine import Engine, Exit, ImageRef
from .errors import ContainerFailed, PodmanError
from .mounts import Mount
from .plan import TaskPlan
from .settings import Settings


@dataclass(frozen=True)
class Outcome:
    """How a task's container ended, and what it used."""

    exit: Exit
    peak_rss: int = 0
    cpu_seconds: float = 0.0
    samples: int = 0

    def usage_fields(self) -> Dict[str, Any]:
        """Log fields for the usage report (empty when nothing was sampled)."""
        if not self.samples:
            return {}
        return {
            "peak_rss_mib": round(self.peak_rss / 2**20, 1),
            "cpu_seconds": round(self.cpu_seconds, 2),
            "samples": self.samples,
        }


def report_usage(logger: logging.Logger, outcome: Outcome) -> None:
    """Log the task's peak memory and CPU time (``task resource usage``)."""
    fields = outcome.usage_fields()
    if fields:
        notice(logger, _("task resource usage", **fields))
    else:
        logger.debug(_("task resource usage not sampled: the task ended within a second"))


def gpu_devices(settings: Settings) -> List[str]:
    """The CDI devices for a runtime.gpu task on this host, checked before anything is
    created (CDI specs are per host: on Slurm this runs on the compute node)."""
    missing = resources.missing_cdi_devices(settings.gpu_devices, settings.cdi_spec_dirs)
    if missing:
        raise ContainerFailed(
            f"runtime.gpu needs the CDI device(s) {', '.join(missing)}, but no CDI spec in"
            f" {', '.join(settings.cdi_spec_dirs)} declares them; generate one (NVIDIA:"
            " `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`), or set"
            " [podman_rootless] gpu_devices / cdi_spec_dirs"
        )
    return list(settings.gpu_devices)


class Launcher:
    """Runs task plans on one engine; resolves each image's identity once per process."""

    def __init__(self, engine: Engine, settings: Settings, host: identity.HostIds) -> None:
        self.engine = engine
        self.settings = settings
        self.host = host
        self._identities: Once[identity.Identity] = Once()

    def image(self, plan: TaskPlan, logger: logging.Logger) -> ImageRef:
        """The plan's image in the local store: pulled, or built from the inline Dockerfile."""
        if plan.inline_dockerfile:
            return self.engine.images.build(
                plan.inline_dockerfile, os.path.join(plan.task_dir, "inlineDockerfile.log"), logger
            )
        return self.engine.images.ensure(plan.image, logger)

    def identity_for(self, image: str, ref: ImageRef, logger: logging.Logger) -> identity.Identity:
        """The task's identity for this image, worked out once per image per process."""
        engine, settings, host = self.engine, self.settings, self.host

        def resolve() -> identity.Identity:
            user = identity.ImageUser(spec=ref.user, resolved=False)
            home_exists = None
            if not (user.is_root or settings.as_user or host.single_uid):
                with engine.images.probe(ref.id, logger) as probe:
                    user = identity.resolve_image_user(
                        image, ref.user, probe.read("/etc/passwd"), probe.read("/etc/group")
                    )
                    if user.home and user.home != "/":
                        home_exists = probe.exists(user.home)
            ans = identity.plan(host, image, user, settings.as_user, home_exists)
            logger.info(
                _(
                    "task identity",
                    image=image,
                    image_user=ref.user,
                    mode=ans.mode,
                    userns=ans.userns or "rootless default (container root = you)",
                    user=ans.user,
                    home=ans.home,
                )
            )
            return ans

        return self._identities.get(ref.id, resolve)[0]

    def spec(
        self, plan: TaskPlan, logger: logging.Logger
    ) -> Tuple[spec_mod.ContainerSpec, identity.Identity]:
        """Resolve image, identity and devices, and compute the container spec."""
        devices = gpu_devices(self.settings) if plan.gpu else []
        ref = self.image(plan, logger)
        ident = self.identity_for(plan.image_label, ref, logger)
        mounts = list(plan.mounts)
        if ident.home_tmpfs:
            mounts.append(Mount("tmpfs", ident.home_tmpfs, read_only=False, kind="tmpfs"))
        spec = spec_mod.build(
            settings=self.settings,
            run_id=plan.run_id,
            task_dir=plan.task_dir,
            try_counter=plan.try_counter,
            image=ref.id,
            container_dir=plan.container_dir,
            mounts=mounts,
            identity=ident,
            security_opt=plan.security_opt,
            env=plan.env,
            privileged=plan.privileged,
            network=plan.network,
            limits=plan.limits,
            devices=devices,
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

    def run(
        self,
        plan: TaskPlan,
        logger: logging.Logger,
        terminating: Callable[[], bool],
        poll: Callable[[], None] = lambda: None,
        running: Callable[[], None] = lambda: None,
    ) -> Outcome:
        """Run the plan's container to its end, sampling its processes' usage once a second
        from the first second on (a task that ends sooner costs nothing)."""
        spec, _ident = self.spec(plan, logger)
        tracker = usage.UsageTracker()
        container: Dict[str, Any] = {}

        def started(cid: str) -> None:
            container["id"], container["t0"] = cid, time.monotonic()
            running()

        def polled() -> None:
            poll()
            # the engine also polls once after exit: a task that ended within its first second
            # must not pay for an inspect call (the critical path of short tasks)
            if "id" not in container or time.monotonic() - container["t0"] < 0.9:
                return
            if "pid" not in container:
                container["pid"] = self.engine.containers.pid(container["id"], logger)
            if container.get("pid"):
                tracker.add(usage.sample_tree(int(container["pid"])))

        exit = self.engine.containers.run(spec, logger, terminating, poll=polled, running=started)
        return Outcome(exit, tracker.peak_rss, tracker.cpu_seconds, tracker.samples)

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
            raise PodmanError(
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


def explain_exit(
    outcome: Outcome, mem: int, memory_limit: int, enforced: bool, logger: logging.Logger
) -> Optional[Dict[str, Any]]:
    """For a task killed by SIGKILL/OOM: log the explanation; miniwdl's failure_info, or None."""
    killed = resources.explain_kill(
        outcome.exit.code, outcome.exit.oom_killed, mem, memory_limit, enforced
    )
    if not killed:
        return None
    peak = {"peak_rss_mib": round(outcome.peak_rss / 2**20)} if outcome.samples else {}
    logger.error(_(killed, exit_code=outcome.exit.code, oom_killed=outcome.exit.oom_killed, **peak))
    return {"explanation": killed, "oom_killed": outcome.exit.oom_killed}
