"""The ``podman_rootless`` container backend: miniwdl's TaskContainer for rootless Podman.

This class only orchestrates. ``global_init`` reads the settings once and connects the shared
:class:`~miniwdl_podman.engine.Engine`; ``_run`` reserves resources, resolves the image, writes
the command script, plans the mounts, builds the ContainerSpec and hands it to the engine.
Option logic lives in :mod:`~miniwdl_podman.settings`, :mod:`~miniwdl_podman.mounts`,
:mod:`~miniwdl_podman.identity` and :mod:`~miniwdl_podman.spec`; every Podman call lives in
:mod:`~miniwdl_podman.engine`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from contextlib import ExitStack
from typing import Callable, ClassVar, Dict, List, Optional

from WDL._util import StructuredLogMessage as _
from WDL.runtime import config
from WDL.runtime.task_container import TaskContainer

from . import __version__, resources
from . import mounts as mounts_mod
from . import settings as settings_mod
from . import spec as spec_mod
from ._logging import notice
from .engine import Engine, pool_size_for
from .errors import ContainerFailed, PodmanError


class PodmanRootless(TaskContainer):
    """Run each WDL task in a rootless Podman container through the Podman API."""

    _settings: ClassVar[Optional[settings_mod.Settings]] = None
    _engine: ClassVar[Optional[Engine]] = None
    _limits: ClassVar[Dict[str, int]] = {}
    _scheduler: ClassVar[Optional[resources.Scheduler]] = None
    _init_lock: ClassVar[threading.Lock] = threading.Lock()
    _init_error: ClassVar[Optional[PodmanError]] = None

    _bind_input_files: bool = True

    @classmethod
    def global_init(cls, cfg: config.Loader, logger: logging.Logger) -> None:
        # miniwdl calls this again for each task while it has not succeeded; fail them all with
        # the first error instead of e.g. trying to start a service once per task of a scatter
        if cls._init_error is not None:
            raise cls._init_error
        try:
            settings = settings_mod.load(cfg)
            concurrency = cfg.get_int("scheduler", "task_concurrency", 0) or (os.cpu_count() or 1)
            engine = Engine(settings, pool_size_for(concurrency))
            try:
                engine.connect(logger)
            except BaseException:
                engine.close()
                raise
        except PodmanError as exn:
            cls._init_error = exn
            raise
        cls._settings = settings
        cls._engine = engine
        atexit.register(cls._shutdown, engine, logger)
        cls.detect_resource_limits(cfg, logger)
        notice(
            logger,
            _(
                "podman_rootless backend initialized",
                version=__version__,
                network=settings.network or "podman default",
                pull=settings.pull,
            ),
        )

    @staticmethod
    def _shutdown(engine: Engine, logger: logging.Logger) -> None:
        engine.remove_leftovers(logger)
        engine.close()

    @classmethod
    def detect_resource_limits(cls, cfg: config.Loader, logger: logging.Logger) -> Dict[str, int]:
        with cls._init_lock:
            if not cls._limits:
                cls._limits = resources.host_limits()
                cls._scheduler = resources.Scheduler(cls._limits["cpu"], cls._limits["mem_bytes"])
                logger.info(_("detected host resources", **cls._limits))
        return cls._limits

    # -- per task -------------------------------------------------------------------------------

    def copy_input_files(self, logger: logging.Logger) -> None:
        assert self._bind_input_files
        super().copy_input_files(logger)
        # the inputs are now inside the work dir; no need to bind-mount them individually
        self._bind_input_files = False

    def reset(self, logger: logging.Logger) -> None:
        super().reset(logger)
        # a retry gets a fresh work dir, so it must copy or bind the inputs again
        self._bind_input_files = True

    def _prepare_mounts(self) -> List[mounts_mod.Mount]:
        """Create the host mount points (owned by the invoking user) and plan the mounts."""
        self.touch_mount_point(self.host_stdout_txt())
        self.touch_mount_point(self.host_stderr_txt())
        if self._bind_input_files:
            for container_path in self.input_path_map.values():
                host_mount_point = self.host_work_path(container_path)
                if not os.path.exists(host_mount_point.rstrip("/")):
                    self.touch_mount_point(host_mount_point)
        paths = mounts_mod.TaskPaths(
            container_dir=self.container_dir,
            host_work_dir=self.host_work_dir(),
            host_stdout=self.host_stdout_txt(),
            host_stderr=self.host_stderr_txt(),
            host_command=os.path.join(self.host_dir, "command"),
        )
        return mounts_mod.plan(paths, self.input_path_map, self._bind_input_files)

    def _run(self, logger: logging.Logger, terminating: Callable[[], bool], command: str) -> int:
        engine, settings, scheduler = self._engine, self._settings, self._scheduler
        if engine is None or settings is None or scheduler is None:
            raise PodmanError("podman_rootless backend used before global_init")
        if "inlineDockerfile" in self.runtime_values:
            raise ContainerFailed(
                "runtime.inlineDockerfile is not supported by the podman_rootless backend yet;"
                " build the image with `podman build` and name it in runtime.container"
            )
        if self.runtime_values.get("gpu", False):
            logger.warning(_("runtime.gpu is not supported by podman_rootless yet; ignored"))
        with ExitStack() as cleanup:
            cpu = int(self.runtime_values.get("cpu", 0))
            mem = int(self.runtime_values.get("memory_reservation", 0))
            reservation = cleanup.enter_context(scheduler.reserve(cpu, mem))
            logger.info(
                _(
                    "provisioned",
                    seconds_waited=round(reservation.waited, 3),
                    cpu=cpu,
                    mem_bytes=mem,
                )
            )
            image = self.runtime_values.get("docker") or self.cfg.get_dict(
                "task_runtime", "defaults"
            ).get("docker", "ubuntu:22.04")
            image_id = engine.ensure_image(image, logger)

            with open(os.path.join(self.host_dir, "command"), "w") as outfile:
                outfile.write(command)
            spec = spec_mod.build(
                settings=settings,
                run_id=self.run_id,
                task_dir=self.host_dir,
                try_counter=self.try_counter,
                image=image_id,
                container_dir=self.container_dir,
                mounts=self._prepare_mounts(),
                env=self.runtime_values.get("env", {}),
                privileged=bool(self.runtime_values.get("privileged", False)),
            )
            logger.info(
                _(
                    "podman container spec",
                    name=spec.name,
                    image=image,
                    userns=spec.identity.userns,
                    mounts=len(spec.mounts),
                    network=spec.network or "default",
                )
            )
            poll_stderr = cleanup.enter_context(self.poll_stderr_context(logger))
            return engine.run(
                spec,
                logger,
                terminating,
                poll=poll_stderr,
                running=lambda: cleanup.enter_context(self.task_running_context()),
            )
