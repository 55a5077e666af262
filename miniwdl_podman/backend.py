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

from . import __version__, budget, identity, ownership, resources, usage
from . import mounts as mounts_mod
from . import settings as settings_mod
from . import spec as spec_mod
from ._logging import notice
from ._once import Once
from .engine import Engine, ImageRef, pool_size_for
from .errors import ContainerFailed, PodmanError


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
    _identities: ClassVar[Once[identity.Identity]] = Once()
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
                limits["cpu"], limits["mem_bytes"], coordination_dir
            )
            logger.info(_("sharing the node's cpu/memory budget with your other runs",
                          ledger=cls._scheduler.ledger))  # fmt: skip
        cls._host_ids = identity.host_ids(engine.info, os.geteuid(), os.getegid())
        cls._enforcement = resources.enforcement(engine.info)
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

    def _identity(self, image: str, ref: ImageRef, logger: logging.Logger) -> identity.Identity:
        """The task's identity for this image, worked out once per image per process."""
        engine, settings, host = self._engine, self._settings, self._host_ids
        assert engine is not None and settings is not None and host is not None

        def resolve() -> identity.Identity:
            user = identity.ImageUser(spec=ref.user, resolved=False)
            home_exists = None
            if not (user.is_root or settings.as_user or host.single_uid):
                with engine.image_probe(ref.id, logger) as probe:
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

    def _settle_ownership(self, logger: logging.Logger) -> None:
        """Give back files the task left owned by other uids, or fail the task naming them.

        Always, whatever ``[file_io] chown`` says: miniwdl itself chmods the whole run directory
        after a task and fails with a traceback on any file the user does not own.
        """
        engine = self._engine
        assert engine is not None
        roots = [self.host_work_dir(), self.host_stdout_txt(), self.host_stderr_txt()]
        foreign = ownership.foreign_paths(roots, os.geteuid(), os.getegid())
        if not foreign:
            return
        error = engine.unshare_chown(foreign)
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

    def _report_usage(self, logger: logging.Logger, tracker: usage.UsageTracker) -> None:
        if not tracker.samples:
            logger.debug(_("task resource usage not sampled: the task ended within a second"))
            return
        notice(
            logger,
            _(
                "task resource usage",
                peak_rss_mib=round(tracker.peak_rss / 2**20, 1),
                cpu_seconds=round(tracker.cpu_seconds, 2),
                samples=tracker.samples,
            ),
        )

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

    def _prepare_mounts(
        self, relabel: Optional[str], tmpfs: Optional[str]
    ) -> List[mounts_mod.Mount]:
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
        return mounts_mod.plan(
            paths, self.input_path_map, self._bind_input_files, relabel=relabel, tmpfs=tmpfs
        )

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
        return resources.limit_kwargs(enf, cpu, memory_limit)

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

    def _gpu_devices(self, settings: settings_mod.Settings) -> List[str]:
        """CDI devices for a runtime.gpu task, checked before anything is created."""
        if not self.runtime_values.get("gpu", False):
            return []
        missing = resources.missing_cdi_devices(settings.gpu_devices, settings.cdi_spec_dirs)
        if missing:
            raise ContainerFailed(
                f"runtime.gpu needs the CDI device(s) {', '.join(missing)}, but no CDI spec in"
                f" {', '.join(settings.cdi_spec_dirs)} declares them; generate one (NVIDIA:"
                " `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`), or set"
                " [podman_rootless] gpu_devices / cdi_spec_dirs"
            )
        return list(settings.gpu_devices)

    def _run(self, logger: logging.Logger, terminating: Callable[[], bool], command: str) -> int:
        engine, settings, scheduler = self._engine, self._settings, self._scheduler
        if engine is None or settings is None or scheduler is None:
            raise PodmanError("podman_rootless backend used before global_init")
        devices = self._gpu_devices(settings)
        with ExitStack() as cleanup:
            cpu = int(self.runtime_values.get("cpu", 0))
            mem = int(self.runtime_values.get("memory_reservation", 0))
            memory_limit = int(self.runtime_values.get("memory_limit", 0))
            reservation = cleanup.enter_context(scheduler.reserve(cpu, mem))
            logger.info(
                _(
                    "provisioned",
                    seconds_waited=round(reservation.waited, 3),
                    cpu=cpu,
                    mem_bytes=mem,
                )
            )
            if "inlineDockerfile" in self.runtime_values:
                image = "runtime.inlineDockerfile"
                ref = engine.build_image(
                    self.runtime_values["inlineDockerfile"],
                    os.path.join(self.host_dir, "inlineDockerfile.log"),
                    logger,
                )
            else:
                image = self.runtime_values.get("docker") or self.cfg.get_dict(
                    "task_runtime", "defaults"
                ).get("docker", "ubuntu:22.04")
                ref = engine.ensure_image(image, logger)
            ident = self._identity(image, ref, logger)
            security_opt, relabel = mounts_mod.selinux_plan(settings.selinux)
            if self.runtime_values.get("privileged", False):
                logger.warning(_("runtime.privileged enabled (security & portability warning)"))

            try:
                with open(os.path.join(self.host_dir, "command"), "w") as outfile:
                    outfile.write(command)
                task_mounts = self._prepare_mounts(relabel, ident.home_tmpfs)
            except OSError as exn:
                raise PodmanError(
                    f"cannot prepare the task's files in {self.host_dir}: {exn.strerror}"
                    f" ({exn.filename}); free space there or make it writable, or run elsewhere"
                    " (miniwdl run --dir)"
                ) from None
            spec = spec_mod.build(
                settings=settings,
                run_id=self.run_id,
                task_dir=self.host_dir,
                try_counter=self.try_counter,
                image=ref.id,
                container_dir=self.container_dir,
                mounts=task_mounts,
                identity=ident,
                security_opt=security_opt,
                env=self.runtime_values.get("env", {}),
                privileged=bool(self.runtime_values.get("privileged", False)),
                network=self._network(settings, logger),
                limits=self._hard_limits(logger, cpu, memory_limit),
                devices=devices,
            )
            logger.info(
                _(
                    "podman container spec",
                    name=spec.name,
                    image=image,
                    identity=ident.mode,
                    user=ident.user,
                    mounts=len(spec.mounts),
                    network=spec.network or "default",
                    security_opt=spec.security_opt,
                    relabel=relabel,
                    limits=spec.limits,
                    devices=spec.devices,
                )
            )
            poll_stderr = cleanup.enter_context(self.poll_stderr_context(logger))
            tracker = usage.UsageTracker()
            container: Dict[str, object] = {}

            def running(cid: str) -> None:
                container["id"] = cid
                cleanup.enter_context(self.task_running_context())

            def poll() -> None:
                poll_stderr()
                # from the first poll on (a task that ends sooner costs nothing): sample the
                # container's processes in /proc for peak memory and CPU time
                if "pid" not in container and "id" in container:
                    container["pid"] = engine.container_pid(str(container["id"]), logger)
                pid = int(container.get("pid") or 0)
                if pid:
                    tracker.add(usage.sample_tree(pid))

            outcome = engine.run(spec, logger, terminating, poll=poll, running=running)
        self._report_usage(logger, tracker)
        self._settle_ownership(logger)
        if not self.success_exit_code(outcome.code):
            self._explain_failure(logger)
            killed = resources.explain_kill(
                outcome.code, outcome.oom_killed, mem, memory_limit, self._enforcement.memory
            )
            if killed:
                peak = {"peak_rss_mib": round(tracker.peak_rss / 2**20)} if tracker.samples else {}
                logger.error(
                    _(killed, exit_code=outcome.code, oom_killed=outcome.oom_killed, **peak)
                )
                self.failure_info = {"explanation": killed, "oom_killed": outcome.oom_killed}
        return outcome.code
