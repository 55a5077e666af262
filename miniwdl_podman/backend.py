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

from WDL import Error
from WDL._util import StructuredLogMessage as _
from WDL.runtime import config
from WDL.runtime.task_container import TaskContainer

from . import __version__, budget, identity, launch, resources
from . import mounts as mounts_mod
from . import settings as settings_mod
from ._logging import notice
from .engine import Engine, pool_size_for
from .errors import PodmanError


class PodmanRootless(TaskContainer):
    """Run each WDL task in a rootless Podman container through the Podman API."""

    _settings: ClassVar[Optional[settings_mod.Settings]] = None
    _engine: ClassVar[Optional[Engine]] = None
    _limits: ClassVar[Dict[str, int]] = {}
    _scheduler: ClassVar[Optional[resources.Scheduler]] = None
    _init_lock: ClassVar[threading.Lock] = threading.Lock()
    _init_error: ClassVar[Optional[PodmanError]] = None
    _host_ids: ClassVar[Optional[identity.HostIds]] = None
    _selinux_enforcing: ClassVar[bool] = False
    _launcher: ClassVar[Optional[launch.Launcher]] = None
    _enforcement: ClassVar[resources.Enforcement] = resources.Enforcement(cpu=False, memory=False)
    _limits_notice_done: ClassVar[bool] = False

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
            coordination_dir = None
            if settings.coordinate:
                coordination_dir = budget.ensure_private_dir(
                    settings.coordination_dir or budget.default_dir(os.geteuid())
                )
            engine = Engine(settings, pool_size_for(concurrency), coordination_dir)
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
        engine.reap_dead_runs(logger)
        limits = cls.detect_resource_limits(cfg, logger)
        if coordination_dir:
            cls._scheduler = budget.SharedScheduler(
                limits["cpu"], limits["mem_bytes"], coordination_dir, settings.gpu_concurrency
            )
            logger.info(_("sharing the node's cpu/memory/GPU budget with your other runs",
                          ledger=cls._scheduler.ledger))  # fmt: skip
        else:
            cls._scheduler = resources.Scheduler(
                limits["cpu"], limits["mem_bytes"], settings.gpu_concurrency
            )
        cls._host_ids = identity.host_ids(engine.info, os.geteuid(), os.getegid())
        cls._launcher = launch.Launcher(engine, settings, cls._host_ids)
        cls._enforcement = resources.enforcement(engine.facts)
        cls._selinux_enforcing = mounts_mod.selinux_enforcing()
        notice(
            logger,
            _(
                "podman_rootless backend initialized",
                version=__version__,
                network=settings.network or "podman default",
                pull=settings.pull,
                selinux=settings.selinux,
                selinux_enforcing=cls._selinux_enforcing,
                subuids=cls._host_ids.subuids,
                cpu_limits=cls._enforcement.cpu,
                memory_limits=cls._enforcement.memory,
            ),
        )
        if cls._host_ids.single_uid:
            logger.warning(
                _(
                    "single-uid mode: your user has no subordinate uid/gid range, so tasks run as"
                    " container root (which is you) and images with a non-root USER, or with"
                    " files owned by several users, cannot run; " + identity.SUBUID_FIX,
                    uid=cls._host_ids.uid,
                )
            )
        if cls._selinux_enforcing and settings.selinux != "disable":
            logger.warning(
                _(
                    "SELinux is enforcing and containers are confined: inputs must carry a label"
                    " containers may read (they are never relabelled); if tasks get 'Permission"
                    " denied', set [podman_rootless] selinux = disable",
                    selinux=settings.selinux,
                )
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

    def _explain_failure(self, logger: logging.Logger) -> None:
        """Explain well-known causes visible in the failed task's stderr (full disk; SELinux
        'Permission denied' on an enforcing host with confined containers)."""
        settings = self._settings
        try:
            with open(self.host_stderr_txt(), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 65536))
                tail = f.read().decode("utf-8", errors="replace").lower()
        except OSError:
            tail = ""
        try:
            st = os.statvfs(self.host_work_dir())
            free = st.f_bavail * st.f_frsize
            full = free < max(1 << 20, st.f_blocks * st.f_frsize // 1000)
        except OSError:
            free, full = -1, False
        # the task's own "No space left on device" may not even fit in stderr.txt on that disk
        if full or "no space left on device" in tail:
            logger.error(
                _(
                    "the task ran out of disk space ('No space left on device'): free space where"
                    " the run directory is, or run it elsewhere (miniwdl run --dir)",
                    work_dir=self.host_work_dir(),
                    free_bytes=free,
                )
            )
        confined = settings is not None and settings.selinux != "disable"
        if self._selinux_enforcing and confined and "permission denied" in tail:
            logger.error(
                _(
                    "the task hit 'Permission denied' on an SELinux-enforcing host with confined"
                    " containers; inputs are never relabelled, so set [podman_rootless] selinux ="
                    " disable (env MINIWDL__PODMAN_ROOTLESS__SELINUX=disable), or label the inputs"
                    " for containers (chcon -t container_file_t ...)",
                    selinux=settings.selinux if settings else None,
                )
            )

    def _prepare_mounts(self, relabel: Optional[str]) -> List[mounts_mod.Mount]:
        """Create the host mount points (owned by the invoking user) and plan the mounts."""
        self.touch_mount_point(self.host_stdout_txt())
        self.touch_mount_point(self.host_stderr_txt())
        if self._bind_input_files:
            for host_path, container_path in self.input_path_map.items():
                if not os.path.exists(host_path.rstrip("/")):
                    raise Error.InputError(
                        f"input path vanished before the task started: {host_path.rstrip('/')}"
                        " (was it deleted or moved while the workflow ran?)"
                    )
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
        return mounts_mod.plan(paths, self.input_path_map, self._bind_input_files, relabel=relabel)

    def _hard_limits(self, logger: logging.Logger, cpu: int, memory_limit: int) -> Dict[str, int]:
        """Create kwargs for the hard limits this host enforces; say once what it cannot."""
        enf = self._enforcement
        unenforced = [
            what
            for what, asked, ok in (
                ("cpu", cpu > 0, enf.cpu),
                ("memory", memory_limit > 0, enf.memory),
            )
            if asked and not ok
        ]
        if unenforced:
            with self._init_lock:
                first = not PodmanRootless._limits_notice_done
                PodmanRootless._limits_notice_done = True
            if first:
                logger.warning(
                    _(
                        f"{' and '.join(unenforced)} limits are not enforced on this host (tasks"
                        " still get their reservations from the scheduler): "
                        f"{enf.why_not}; to enforce them, {enf.fix}",
                    )
                )
        return resources.hard_limits(enf, cpu, memory_limit)

    def _network(self, settings: settings_mod.Settings, logger: logging.Logger) -> str:
        """The task's network: runtime.docker_network if allowed, else the configured one."""
        asked = self.runtime_values.get("docker_network")
        if not asked:
            return settings.network
        if asked in settings.allow_networks:
            return str(asked)
        logger.warning(
            _(
                "runtime.docker_network ignored; the network name must appear in the JSON list"
                " [podman_rootless] allow_networks / env MINIWDL__PODMAN_ROOTLESS__ALLOW_NETWORKS",
                docker_network=asked,
            )
        )
        return settings.network

    def _plan(
        self,
        settings: settings_mod.Settings,
        logger: logging.Logger,
        command: str,
        limits: Dict[str, int],
    ) -> launch.TaskPlan:
        """Write the command script, make the mount points, and plan the task's container
        (everything decided before its image is resolved)."""
        security_opt, relabel = mounts_mod.selinux_plan(settings.selinux)
        if self.runtime_values.get("privileged", False):
            logger.warning(_("runtime.privileged enabled (security & portability warning)"))
        try:
            with open(os.path.join(self.host_dir, "command"), "w") as outfile:
                outfile.write(command)
            task_mounts = self._prepare_mounts(relabel)
        except OSError as exn:
            raise PodmanError(
                f"cannot prepare the task's files in {self.host_dir}: {exn.strerror}"
                f" ({exn.filename}); free space there or make it writable, or run elsewhere"
                " (miniwdl run --dir)"
            ) from None
        inline = str(self.runtime_values.get("inlineDockerfile") or "")
        image = ""
        if not inline:
            image = self.runtime_values.get("docker") or self.cfg.get_dict(
                "task_runtime", "defaults"
            ).get("docker", "ubuntu:22.04")
        return launch.TaskPlan(
            run_id=self.run_id,
            task_dir=self.host_dir,
            try_counter=self.try_counter,
            container_dir=self.container_dir,
            mounts=task_mounts,
            image=str(image),
            inline_dockerfile=inline,
            env={str(k): str(v) for k, v in self.runtime_values.get("env", {}).items()},
            privileged=bool(self.runtime_values.get("privileged", False)),
            network=self._network(settings, logger),
            security_opt=security_opt,
            limits=limits,
            gpu=bool(self.runtime_values.get("gpu", False)),
            writable=[self.host_work_dir(), self.host_stdout_txt(), self.host_stderr_txt()],
        )

    def _run(self, logger: logging.Logger, terminating: Callable[[], bool], command: str) -> int:
        launcher, settings, scheduler = self._launcher, self._settings, self._scheduler
        if launcher is None or settings is None or scheduler is None:
            raise PodmanError("podman_rootless backend used before global_init")
        cpu = int(self.runtime_values.get("cpu", 0))
        mem = int(self.runtime_values.get("memory_reservation", 0))
        memory_limit = int(self.runtime_values.get("memory_limit", 0))
        gpu = bool(self.runtime_values.get("gpu", False))
        if gpu:
            launch.gpu_devices(settings)  # fail before waiting for resources
        with ExitStack() as cleanup:
            reservation = cleanup.enter_context(scheduler.reserve(cpu, mem, gpu))
            logger.info(
                _(
                    "provisioned",
                    seconds_waited=round(reservation.waited, 3),
                    cpu=cpu,
                    mem_bytes=mem,
                    gpu_slot=reservation.gpu,
                )
            )
            limits = self._hard_limits(logger, cpu, memory_limit)
            plan = self._plan(settings, logger, command, limits)
            poll_stderr = cleanup.enter_context(self.poll_stderr_context(logger))
            outcome = launcher.run(
                plan,
                logger,
                terminating,
                poll=poll_stderr,
                running=lambda: cleanup.enter_context(self.task_running_context()),
            )
        launch.report_usage(logger, outcome)
        launcher.settle_ownership(plan.writable, logger)
        if not self.success_exit_code(outcome.exit.code):
            self._explain_failure(logger)
            info = launch.explain_exit(outcome, mem, memory_limit, self._enforcement.memory, logger)
            if info:
                self.failure_info = info
        return outcome.exit.code
