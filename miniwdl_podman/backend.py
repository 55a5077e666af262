"""The ``podman_rootless`` container backend: each task in a rootless Podman container here.

Orchestration only, over :class:`~miniwdl_podman.base.PodmanTaskContainer`. ``global_init``
assembles the process's :class:`~miniwdl_podman.runtime.Runtime` (engine, host ids, launcher,
enforcement) and its scheduler once; ``_run`` reserves the task's resources, plans it
(:mod:`~miniwdl_podman.plan`) and hands the plan to the :class:`~miniwdl_podman.launch.Launcher`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from contextlib import ExitStack
from typing import Callable, ClassVar, Dict, Optional

from WDL._util import StructuredLogMessage as _
from WDL.runtime import config
from WDL.runtime.error import Terminated

from . import __version__, budget, capacity, exits, gpu, identity, usage_record
from . import plan as plan_mod
from ._logging import notice
from .base import PodmanTaskContainer
from .engine import pool_size_for
from .runtime import Runtime, open_runtime


class PodmanRootless(PodmanTaskContainer):
    """Run each WDL task in a rootless Podman container through the Podman API."""

    _runtime: ClassVar[Optional[Runtime]] = None
    _limits: ClassVar[Dict[str, int]] = {}
    _scheduler: ClassVar[Optional[budget.Scheduler]] = None
    _limits_lock: ClassVar[threading.Lock] = threading.Lock()
    _limits_notice_done: ClassVar[bool] = False
    backend_name: ClassVar[str] = "podman_rootless"

    @classmethod
    def global_init(cls, cfg: config.Loader, logger: logging.Logger) -> None:
        super().global_init(cfg, logger)
        settings = cls.settings()
        concurrency = cfg.get_int("scheduler", "task_concurrency", 0) or (os.cpu_count() or 1)
        with cls._remembering_init_error():
            runtime = open_runtime(settings, logger, pool_size_for(concurrency))
        cls._runtime = runtime
        atexit.register(runtime.close, logger)
        limits = cls.detect_resource_limits(cfg, logger)
        cls._scheduler = budget.scheduler(
            limits["cpu"], limits["mem_bytes"], settings.gpu_concurrency, runtime.coordination_dir
        )
        if isinstance(cls._scheduler, budget.SharedScheduler):
            logger.info(_("sharing the node's cpu/memory/GPU budget with your other runs",
                          ledger=cls._scheduler.ledger))  # fmt: skip
        host, enf = runtime.host, runtime.enforcement
        notice(
            logger,
            _(
                "podman_rootless backend initialized",
                version=__version__,
                network=settings.network or "podman default",
                pull=settings.pull,
                selinux=settings.selinux,
                selinux_enforcing=cls._selinux_enforcing,
                subuids=host.subuids,
                cpu_limits=enf.cpu,
                memory_limits=enf.memory,
            ),
        )
        if host.single_uid:
            logger.warning(
                _(
                    "single-uid mode: your user has no subordinate uid/gid range, so tasks run as"
                    " container root (which is you) and images with a non-root USER, or with"
                    " files owned by several users, cannot run; " + identity.SUBUID_FIX,
                    uid=host.uid,
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

    @classmethod
    def detect_resource_limits(cls, cfg: config.Loader, logger: logging.Logger) -> Dict[str, int]:
        with cls._limits_lock:
            if not cls._limits:
                cls._limits = capacity.host_capacity()
                logger.info(_("detected host resources", **cls._limits))
        return cls._limits

    # -- per task -------------------------------------------------------------------------------

    def _hard_limits(self, logger: logging.Logger, cpu: int, memory_limit: int) -> Dict[str, int]:
        """The hard limits this host enforces; say once per run what it cannot."""
        assert self._runtime is not None
        enf = self._runtime.enforcement
        limits, unenforced = plan_mod.hard_limits(enf, cpu, memory_limit)
        if unenforced:
            with self._limits_lock:
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
        return limits

    def _ready(self) -> bool:
        return self._runtime is not None and self._scheduler is not None

    def _attempt(
        self,
        logger: logging.Logger,
        terminating: Callable[[], bool],
        command: str,
        record: usage_record.AttemptRecord,
    ) -> int:
        runtime, scheduler = self._runtime, self._scheduler
        assert runtime is not None and scheduler is not None
        cpu = int(self.runtime_values.get("cpu", 0))
        mem = int(self.runtime_values.get("memory_reservation", 0))
        memory_limit = int(self.runtime_values.get("memory_limit", 0))
        wants_gpu = bool(self.runtime_values.get("gpu", False))
        if wants_gpu:
            gpu.gpu_devices(runtime.settings)  # fail before waiting for resources
        with ExitStack() as cleanup:
            reservation = cleanup.enter_context(scheduler.reserve(cpu, mem, wants_gpu))
            record.seconds["waiting"] = round(reservation.waited, 3)
            logger.info(
                _(
                    "provisioned",
                    seconds_waited=round(reservation.waited, 3),
                    cpu=cpu,
                    mem_bytes=mem,
                    gpu_slot=reservation.gpu,
                )
            )
            plan = self._task_plan(logger, command, self._hard_limits(logger, cpu, memory_limit))
            record.limits = dict(plan.limits)
            poll_stderr = cleanup.enter_context(self.poll_stderr_context(logger))
            with runtime.launcher.start(plan, logger) as task:
                started = time.monotonic()
                record.image, record.image_id = plan.image_label, task.image.id
                record.image_digest = task.image.digest or None
                record.seconds["image"] = round(task.image_seconds, 3)
                cleanup.enter_context(self.task_running_context())
                while (outcome := task.wait(1.0)) is None:
                    poll_stderr()
                    if terminating():
                        task.kill()
                        raise Terminated()
                record.seconds["container"] = round(time.monotonic() - started, 3)
            poll_stderr()
        self._record_outcome(record, outcome)
        self._report_usage(logger, outcome)
        runtime.launcher.settle_ownership(plan.writable, logger)
        if not self.success_exit_code(outcome.exit.code):
            self._explain_failure(logger)
            memory = exits.MemoryContext(mem, memory_limit, runtime.enforcement.memory)
            self._explain_kill(logger, outcome, memory)
        return outcome.exit.code
