"""What the two backends share: miniwdl's TaskContainer side of a rootless Podman task.

:class:`PodmanTaskContainer` is the base of ``podman_rootless`` (:mod:`~miniwdl_podman.backend`)
and ``podman_rootless_slurm`` (:mod:`~miniwdl_podman.slurm_backend`), siblings that both call
``super().global_init``. It reads the settings once and remembers an initialisation error (so
every task of a scatter fails with the first error instead of retrying it), binds or copies the
inputs, writes the command script and the mount points, plans the task
(:func:`~miniwdl_podman.plan.task_plan`) and explains well-known failures. Orchestration only:
what to ask for is decided in :mod:`~miniwdl_podman.plan`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from typing import Any, Callable, ClassVar, Dict, Iterator, Optional

from WDL import Error
from WDL._util import StructuredLogMessage as _
from WDL.runtime import config
from WDL.runtime.error import Terminated
from WDL.runtime.task_container import TaskContainer

from . import _backoff, errors, exits, mounts, report, usage_record
from . import plan as plan_mod
from . import settings as settings_mod
from ._logging import notice
from .errors import BackendError


class PodmanTaskContainer(TaskContainer):
    """The shared base of the local and the Slurm backend (not a backend itself)."""

    _settings: ClassVar[Optional[settings_mod.Settings]] = None
    _init_error: ClassVar[Optional[BackendError]] = None
    _selinux_enforcing: ClassVar[bool] = False

    _top: ClassVar[Optional[str]] = None  # the run's top directory, once a task knows it
    _top_lock: ClassVar[threading.Lock] = threading.Lock()

    _bind_input_files: bool = True
    _last_failure: Optional[str] = None  # how the attempt before this one ended (for a retry)

    @classmethod
    def global_init(cls, cfg: config.Loader, logger: logging.Logger) -> None:
        # miniwdl calls this again for each task while it has not succeeded; fail them all with
        # the first error instead of e.g. trying to start a service once per task of a scatter
        if cls._init_error is not None:
            raise cls._init_error
        with cls._remembering_init_error():
            cls._settings = settings_mod.load(cfg)
        cls._selinux_enforcing = mounts.selinux_enforcing()

    @classmethod
    @contextlib.contextmanager
    def _remembering_init_error(cls) -> Iterator[None]:
        """Remember a BackendError raised while initialising, for every later task."""
        try:
            yield
        except BackendError as exn:
            cls._init_error = exn
            raise

    @classmethod
    def settings(cls) -> settings_mod.Settings:
        if cls._settings is None:
            raise BackendError(f"{cls.__name__} backend used before global_init")
        return cls._settings

    # -- inputs -----------------------------------------------------------------------------

    def copy_input_files(self, logger: logging.Logger) -> None:
        assert self._bind_input_files
        super().copy_input_files(logger)
        # the inputs are now inside the work dir; no need to bind-mount them individually
        self._bind_input_files = False

    def reset(self, logger: logging.Logger) -> None:
        super().reset(logger)
        # a retry gets a fresh work dir, so it must copy or bind the inputs again
        self._bind_input_files = True

    # -- retries ----------------------------------------------------------------------------

    def _pace_retry(self, logger: logging.Logger, terminating: Callable[[], bool]) -> None:
        """Before a retry (attempt 2 and later), wait ``retry_wait`` seconds doubling per retry
        up to ``retry_wait_max``, jittered: something transient (a registry restart, an NFS
        hiccup, a disk being cleaned) gets time to clear, and tasks that failed together do not
        retry in lockstep. Stops at once when miniwdl is terminating."""
        if self.try_counter <= 1:
            return
        settings = self.settings()
        wait = _backoff.delay(self.try_counter - 2, settings.retry_wait, settings.retry_wait_max)
        if wait <= 0:
            return
        notice(logger, _(f"retrying in {wait:.1f} s", attempt=self.try_counter))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if terminating():
                raise Terminated()
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    # -- planning ---------------------------------------------------------------------------

    def _paths(self) -> mounts.TaskPaths:
        return mounts.TaskPaths(
            container_dir=self.container_dir,
            host_work_dir=self.host_work_dir(),
            host_stdout=self.host_stdout_txt(),
            host_stderr=self.host_stderr_txt(),
            host_command=os.path.join(self.host_dir, "command"),
        )

    def _write_task_files(self, command: str) -> None:
        """The command script and the host mount points (owned by the invoking user); an input
        that vanished since miniwdl checked it is named."""
        try:
            # surrogateescape: an input path that is not UTF-8 keeps its bytes in the script
            with open(
                os.path.join(self.host_dir, "command"),
                "w",
                encoding="utf-8",
                errors="surrogateescape",
            ) as outfile:
                outfile.write(command)
            self.touch_mount_point(self.host_stdout_txt())
            self.touch_mount_point(self.host_stderr_txt())
            if self._bind_input_files:
                for host_path, container_path in self.input_path_map.items():
                    if not os.path.exists(host_path.rstrip("/")):
                        raise Error.InputError(
                            "input path vanished before the task started:"
                            f" {host_path.rstrip('/')} (was it deleted or moved while the"
                            " workflow ran?)"
                        )
                    host_mount_point = self.host_work_path(container_path)
                    if not os.path.exists(host_mount_point.rstrip("/")):
                        self.touch_mount_point(host_mount_point)
        except OSError as exn:
            raise BackendError(
                f"cannot prepare the task's files in {self.host_dir}: {exn.strerror}"
                f" ({exn.filename}); free space there or make it writable, or run elsewhere"
                " (miniwdl run --dir)"
            ) from None

    def _task_plan(
        self, logger: logging.Logger, command: str, limits: Dict[str, int]
    ) -> plan_mod.TaskPlan:
        """Write the task's files and plan its container (everything decided before its image
        is resolved)."""
        settings = self.settings()
        if self.runtime_values.get("privileged", False):
            logger.warning(_("runtime.privileged enabled (security & portability warning)"))
        asked = self.runtime_values.get("docker_network")
        network, warning = plan_mod.task_network(asked, settings)
        if warning:
            logger.warning(_(warning, docker_network=asked))
        self._write_task_files(command)
        defaults: Dict[str, Any] = self.cfg.get_dict("task_runtime", "defaults")
        return plan_mod.task_plan(
            run_id=self.run_id,
            task_dir=self.host_dir,
            try_counter=self.try_counter,
            paths=self._paths(),
            input_path_map=self.input_path_map,
            bind_inputs=self._bind_input_files,
            runtime_values=self.runtime_values,
            default_image=str(defaults.get("docker", plan_mod.DEFAULT_IMAGE)),
            settings=settings,
            network=network,
            limits=limits,
        )

    # -- one attempt ------------------------------------------------------------------------

    # the backend's name, as its usage records and errors give it
    backend_name: ClassVar[str] = ""

    def _ready(self) -> bool:
        """Whether ``global_init`` assembled what ``_attempt`` needs."""
        raise NotImplementedError

    def _attempt(
        self,
        logger: logging.Logger,
        terminating: Callable[[], bool],
        command: str,
        record: usage_record.AttemptRecord,
    ) -> int:
        """Run the attempt's container (the backend's own job); fill ``record`` as it goes."""
        raise NotImplementedError

    def _run(self, logger: logging.Logger, terminating: Callable[[], bool], command: str) -> int:
        """miniwdl's hook: pace a retry, run the attempt, and write its usage record whatever
        its end."""
        if not self._ready():
            raise BackendError(f"{self.backend_name} backend used before global_init")
        self._pace_retry(logger, terminating)
        self._run_top()
        record = self._new_record()
        record.retry_reason = self._last_failure if self.try_counter > 1 else None
        try:
            code = self._attempt(logger, terminating, command, record)
        except BaseException as exn:
            self._last_failure = f"{type(exn).__name__}: {str(exn)[:300]}"
            self._write_record(logger, record, exn)
            raise
        self._last_failure = "out of memory" if record.oom_killed else f"exit status {code}"
        self._write_record(logger, record)
        return code

    def _run_top(self) -> str:
        """The run's top directory: the highest one above this task's with a ``workflow.log``
        (a task run's own directory otherwise); the same for every task of the process. The
        first task to ask also arranges the run's usage summary at exit."""
        base = PodmanTaskContainer
        with base._top_lock:
            if base._top is None:
                top, here = self.host_dir, self.host_dir
                for _level in range(64):
                    here = os.path.dirname(here)
                    if os.path.isfile(os.path.join(here, "workflow.log")):
                        top = here
                    if here == os.path.dirname(here):
                        break
                base._top = top
                atexit.register(_log_run_usage, top, logging.getLogger("miniwdl-podman"))
            return base._top

    def _new_record(self) -> usage_record.AttemptRecord:
        """This attempt's usage record, with what the task asks for."""
        rv = self.runtime_values
        return usage_record.AttemptRecord(
            backend=self.backend_name,
            run_id=self.run_id,
            attempt=self.try_counter,
            started=time.time(),
            requested={
                "cpu": int(rv.get("cpu", 0)) or None,
                "memory_bytes": int(rv.get("memory_reservation", 0)) or None,
                "memory_limit_bytes": int(rv.get("memory_limit", 0)) or None,
                "gpu": bool(rv.get("gpu", False)),
            },
        )

    def _write_record(
        self, logger: logging.Logger, record: usage_record.AttemptRecord, error: Any = None
    ) -> None:
        """Write the record beside the task's log; a failure to write it is only logged."""
        if error is not None:
            record.error = f"{type(error).__name__}: {error}"
        try:
            path = record.write(self.host_dir, time.time())
            logger.debug(_("usage record", path=path))
        except OSError as exn:
            logger.warning(_("could not write the usage record", error=str(exn)))

    @staticmethod
    def _record_outcome(record: usage_record.AttemptRecord, outcome: exits.Outcome) -> None:
        record.exit_code, record.oom_killed = outcome.exit.code, outcome.exit.oom_killed
        if outcome.samples:
            record.peak_rss_bytes = outcome.peak_rss
            record.cpu_seconds = round(outcome.cpu_seconds, 3)
        record.samples = outcome.samples

    # -- the end of a task ------------------------------------------------------------------

    @staticmethod
    def _report_usage(logger: logging.Logger, outcome: exits.Outcome) -> None:
        """Log the task's peak memory and CPU time (``task resource usage``)."""
        fields = outcome.usage_fields()
        if fields:
            notice(logger, _("task resource usage", **fields))
        else:
            logger.debug(_("task resource usage not sampled: the task ended within a second"))

    def _explain_kill(
        self, logger: logging.Logger, outcome: exits.Outcome, memory: exits.MemoryContext
    ) -> None:
        """For a task killed by SIGKILL/OOM: log the explanation and set miniwdl's
        failure_info."""
        killed = exits.explain_kill(outcome.exit.code, outcome.exit.oom_killed, memory)
        if not killed:
            return
        peak = {"peak_rss_mib": round(outcome.peak_rss / 2**20)} if outcome.samples else {}
        logger.error(
            _(killed, exit_code=outcome.exit.code, oom_killed=outcome.exit.oom_killed, **peak)
        )
        self.failure_info = {"explanation": killed, "oom_killed": outcome.exit.oom_killed}

    def _explain_failure(self, logger: logging.Logger) -> None:
        """Explain well-known causes visible in the failed task's stderr and work dir (full
        disk; SELinux 'Permission denied' on an enforcing host with confined containers)."""
        try:
            with open(self.host_stderr_txt(), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 65536))
                tail = f.read().decode("utf-8", errors="replace")
        except OSError:
            tail = ""
        try:
            st = os.statvfs(self.host_work_dir())
            free = st.f_bavail * st.f_frsize
            full = free < max(1 << 20, st.f_blocks * st.f_frsize // 1000)
        except OSError:
            free, full = -1, False
        selinux = self._settings.selinux if self._settings is not None else "disable"
        for message in errors.explain_task_failure(
            tail, disk_full=full, selinux_enforcing=self._selinux_enforcing, selinux=selinux
        ):
            logger.error(_(message, work_dir=self.host_work_dir(), free_bytes=free))


def _log_run_usage(top: str, logger: logging.Logger) -> None:
    """At the end of the process: one line summing up the run's usage records and naming the
    report command, appended to the run's ``workflow.log`` (``task.log`` for a task run; miniwdl
    has closed its own handler
    by then) and, when the run succeeded, logged (shown on the terminal); a failed run's last
    terminal line stays miniwdl's error. Best effort: a run that cannot be read says nothing."""
    try:
        attempts = report.gather(top)
        if not attempts:
            return
        message = _("run usage", **report.log_line(report.summarize(top, attempts)))
        logs = [os.path.join(top, n) for n in ("workflow.log", "task.log")]
        log = next((p for p in logs if os.path.isfile(p)), "")
        if log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
            with open(log, "a", encoding="utf-8") as out:
                out.write(f"{stamp} miniwdl-podman NOTICE {message}\n")
        if os.path.isfile(os.path.join(top, "outputs.json")):
            notice(logger, message)
    except Exception as exn:  # never fail miniwdl's exit over a summary
        logger.debug(_("no run usage summary", error=str(exn)))
