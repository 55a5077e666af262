"""The ``podman_rootless_slurm`` container backend: each task's rootless Podman container runs
on a Slurm compute node; miniwdl stays on the login node.

Orchestration only, over :class:`~miniwdl_podman.base.PodmanTaskContainer` (the local
backend's sibling). The task is planned exactly as the local backend plans it (the base's
``_plan``: command script, mount points, mounts, network, SELinux), the plan is written as JSON
beside the task, and one ``sbatch`` job per attempt runs the node helper
(:mod:`~miniwdl_podman.node`), which resolves image and identity and runs the container with the
same :class:`~miniwdl_podman.launch.Launcher`. This side waits for the helper's result file,
watches the job through :class:`~miniwdl_podman.slurm.JobWatcher`, cancels the job when the run
is cancelled, and turns Slurm's kills (memory, time, node failure, preemption) into clear
errors. No Podman is needed on the login node.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any, ClassVar, Dict, Optional, Tuple

from WDL import Error, Type, Value
from WDL._util import StructuredLogMessage as _
from WDL.runtime import config
from WDL.runtime.error import Interrupted, Terminated

from . import __version__, exits, protocol, usage_record
from . import settings as settings_mod
from . import slurm as slurm_mod
from ._logging import notice
from ._once import Once
from .base import PodmanTaskContainer
from .errors import ContainerFailed
from .host import own_start_time
from .plan import TaskPlan
from .runtime import Runtime, open_runtime
from .shared_store import SharedStore, Staged

# how long a finished job's result file may take to show on the login node (NFS caching)
_RESULT_GRACE = 60.0
_WATCH_PERIOD = 5.0


class PodmanRootlessSlurm(PodmanTaskContainer):
    """Run each WDL task in rootless Podman inside its own Slurm job."""

    _slurm: ClassVar[Optional[slurm_mod.Slurm]] = None
    _slurm_settings: ClassVar[Optional[settings_mod.SlurmSettings]] = None
    _watcher: ClassVar[Optional[slurm_mod.JobWatcher]] = None
    _slurm_limits: ClassVar[Dict[str, int]] = {}
    backend_name: ClassVar[str] = "podman_rootless_slurm"
    # shared_store: each image staged (or found) once per run, and every task of the run pinned
    # to that one; the login node's Podman is opened only to stage
    _staged: ClassVar[Once[Staged]] = Once()
    _stager: ClassVar[Optional[Runtime]] = None
    _stager_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def global_init(cls, cfg: config.Loader, logger: logging.Logger) -> None:
        super().global_init(cfg, logger)
        login_only = slurm_mod.login_only_credentials(os.environ)
        if login_only:
            logger.warning(
                _(
                    "your registry credentials are in this login node's runtime dir, which"
                    " compute nodes do not see: their pulls go without them. Put them on the"
                    " shared file system: `podman login --authfile FILE REGISTRY` and `export"
                    " REGISTRY_AUTH_FILE=FILE` before `miniwdl run`",
                    credentials=login_only,
                )
            )
        with cls._remembering_init_error():
            slurm_settings = settings_mod.load_slurm(cfg)
            slurm = slurm_mod.Slurm(slurm_settings)
        cls._slurm_settings, cls._slurm = slurm_settings, slurm
        limits = slurm.limits(logger)
        if limits is None:
            logger.warning(
                _("sinfo could not say how large the cluster's nodes are; not capping tasks")
            )
            limits = {"cpu": 1 << 16, "mem_bytes": 1 << 60}
        cls._slurm_limits = limits
        cls._watcher = slurm_mod.JobWatcher(slurm, _WATCH_PERIOD, logger)
        atexit.register(cls._cancel_live_jobs, logger)
        slurm.reap_dead_runs(logger)
        concurrency = cfg.get_int("scheduler", "task_concurrency", 0)
        notice(
            logger,
            _(
                "podman_rootless_slurm backend initialized",
                version=__version__,
                sbatch=slurm.sbatch_exe,
                largest_node_cpu=limits["cpu"],
                largest_node_mem_bytes=limits["mem_bytes"],
                extra_args=list(slurm_settings.extra_args),
                node_storage=slurm_settings.node_storage or "the user's own",
            ),
        )
        if not concurrency:
            logger.warning(
                _(
                    "[scheduler] task_concurrency is not set, so miniwdl keeps only as many tasks"
                    " in flight as this login node has CPUs; set it to how many Slurm jobs you"
                    " want at once (env MINIWDL__SCHEDULER__TASK_CONCURRENCY=64)",
                    cpus=os.cpu_count(),
                )
            )

    @classmethod
    def detect_resource_limits(cls, cfg: config.Loader, logger: logging.Logger) -> Dict[str, int]:
        # the largest compute node, not this login node: runtime.cpu/memory are capped to it
        return cls._slurm_limits or {"cpu": 1 << 16, "mem_bytes": 1 << 60}

    @classmethod
    def _cancel_live_jobs(cls, logger: logging.Logger) -> None:
        jobs = cls._watcher.live() if cls._watcher is not None else []
        if jobs and cls._slurm is not None:
            cls._slurm.cancel(jobs, logger)

    def process_runtime(self, logger: logging.Logger, runtime_eval: Dict[str, Value.Base]) -> None:
        super().process_runtime(logger, runtime_eval)
        if "time_minutes" in runtime_eval:
            minutes = runtime_eval["time_minutes"].coerce(Type.Int()).value
            if not isinstance(minutes, int) or minutes <= 0:
                raise Error.RuntimeError("invalid setting of runtime.time_minutes")
            self.runtime_values["time_minutes"] = minutes
        for key in slurm_mod.PLACEMENT_TEXT_KEYS:
            if key in runtime_eval:
                text = runtime_eval[key].coerce(Type.String()).value
                if not isinstance(text, str):
                    raise Error.RuntimeError(f"invalid setting of runtime.{key}")
                if text.strip():
                    self.runtime_values[key] = text.strip()
        key = slurm_mod.PLACEMENT_COUNT_KEY
        if key in runtime_eval:
            count = runtime_eval[key].coerce(Type.Int()).value
            if not isinstance(count, int):
                raise Error.RuntimeError(f"invalid setting of runtime.{key}")
            self.runtime_values[key] = max(1, count)

    # -- per task ---------------------------------------------------------------------------

    def _ready(self) -> bool:
        return not (self._slurm is None or self._watcher is None or self._slurm_settings is None)

    def _attempt(
        self,
        logger: logging.Logger,
        terminating: Any,
        command: str,
        record: usage_record.AttemptRecord,
    ) -> int:
        record.slurm = {"job_id": None, "node": None, "state": None, "max_rss_bytes": None,
                        "total_cpu_seconds": None}  # fmt: skip
        slurm, watcher = self._slurm, self._watcher
        settings, ss = self.settings(), self._slurm_settings
        assert slurm is not None and watcher is not None and ss is not None
        cpu = int(self.runtime_values.get("cpu", 0))
        mem = int(self.runtime_values.get("memory_reservation", 0))
        minutes = int(self.runtime_values.get("time_minutes", 0)) or ss.time_minutes
        # Slurm enforces cpu/memory on the job; Podman is asked for no limits of its own
        plan = self._task_plan(logger, command, limits={})
        staged = None
        if settings.shared_store and plan.image:
            staged = self._shared_image(plan.image, logger)
        jobdir = os.path.join(self.host_dir, "slurm")
        os.makedirs(jobdir, exist_ok=True)
        files = protocol.write_job(
            os.path.join(jobdir, f"try{self.try_counter}"),
            plan,
            settings,
            storage=ss.node_storage,
            runtime_dir=ss.node_runtime_dir,
            staged=staged,
            pins=self._pins_dir() if ss.pin_digests and staged is None else "",
        )
        comment = slurm_mod.job_comment(
            os.getpid(), own_start_time(), socket.gethostname(), uuid.uuid4().hex[:12]
        )
        args = slurm_mod.sbatch_args(
            ss,
            job_name=f"miniwdl-{self.run_id}"[:100],
            cpu=cpu,
            memory_bytes=mem,
            time_minutes=minutes,
            placement=slurm_mod.placement(self.runtime_values, ss),
            output=files["log"],
            workdir=self.host_dir,
            comment=comment,
            command=slurm_mod.node_command(ss.node_python, files["json"]),
        )
        logger.info(_("sbatch", args=args))
        job_id = slurm.submit(args, comment, logger, terminating)
        submitted = time.monotonic()
        assert record.slurm is not None
        record.slurm["job_id"] = job_id
        notice(logger, _("slurm job submitted", job_id=job_id, cpu=cpu, mem_bytes=mem,
                         time_minutes=minutes or None))  # fmt: skip
        self._running_at: Optional[float] = None
        job_id, state = self._wait(logger, terminating, job_id, files, slurm, watcher)
        ended = time.monotonic()
        if self._running_at is not None:
            record.seconds["waiting"] = round(self._running_at - submitted, 3)  # in the queue
            record.seconds["container"] = round(ended - self._running_at, 3)
        record.slurm.update(job_id=job_id, state=state)
        return self._conclude(logger, job_id, state, files, plan, mem, minutes, record)

    def _pins_dir(self) -> str:
        """The run's pin directory (``pin_digests``): ``.miniwdl-podman/pins`` in the run's top
        directory (:meth:`_run_top`)."""
        return os.path.join(self._run_top(), ".miniwdl-podman", "pins")

    @classmethod
    def _shared_image(cls, image: str, logger: logging.Logger) -> Staged:
        """``image`` in the shared store, the same for every task of this run: found in its
        index, else staged from this login node (opening this node's Podman once)."""
        settings = cls.settings()
        shared = SharedStore(settings.shared_store)

        def find_or_stage() -> Staged:
            found = shared.reusable(image, settings.pull)
            if found is not None:
                logger.info(_("image in shared store", image=image, id=found.id[:12]))
                return found
            with cls._stager_lock:
                if cls._stager is None:
                    cls._stager = open_runtime(settings, logger, reap=False, shared=False)
                    atexit.register(cls._stager.close, logger)
            return cls._stager.engine.stage(image, shared, logger)

        return cls._staged.get(image, find_or_stage)[0]

    def _wait(
        self,
        logger: logging.Logger,
        terminating: Any,
        job_id: str,
        files: Dict[str, str],
        slurm: slurm_mod.Slurm,
        watcher: slurm_mod.JobWatcher,
    ) -> Tuple[str, str]:
        """Wait for the attempt's result (or its job's end without one); (the job that ran
        the attempt, its final Slurm state). That is the submitted job, unless another job of
        this attempt claimed it first (a submission whose answer sbatch lost): then that one is
        followed and the submitted one cancelled."""
        watcher.watch(job_id)
        try:
            with ExitStack() as cleanup:
                poll_stderr = cleanup.enter_context(self.poll_stderr_context(logger))
                running = confirmed = False
                ended_at: Optional[float] = None
                pending = ("", time.monotonic())  # (Slurm's reason, since when)
                while True:
                    poll_stderr()
                    if not confirmed:
                        holder = protocol.read_claim(files["claim"])
                        confirmed = holder == job_id
                        if holder.isdigit() and holder != job_id:
                            logger.warning(
                                _(
                                    "another Slurm job of this task attempt runs it (sbatch"
                                    " had lost its answer); following it, cancelling the"
                                    " submitted one",
                                    job_id=holder,
                                    submitted=job_id,
                                )
                            )
                            slurm.cancel([job_id], logger)
                            watcher.follow(job_id, holder)
                            job_id = holder
                            confirmed, ended_at = True, None
                    if terminating():
                        # a job still queued must never run the attempt: take its claim
                        holder = protocol.claim(files["claim"], "cancelled") or ""
                        slurm.cancel(sorted(j for j in {job_id, holder} if j.isdigit()), logger)
                        logger.warning(_("cancelled the task's Slurm job", job_id=job_id))
                        self._await_end(job_id, slurm, 60.0)
                        raise Terminated()
                    if not running and os.path.exists(files["started"]):
                        running = True
                        self._running_at = time.monotonic()
                        cleanup.enter_context(self.task_running_context())
                        with open(files["started"]) as f:
                            where = f.read().strip()
                        notice(logger, _("slurm job running", job_id=job_id, node=where))
                    if os.path.exists(files["result"]):
                        break
                    st = watcher.state(job_id)
                    if not running and st is not None and st.state == "PENDING":
                        pending = self._pending(logger, job_id, st.reason, pending, files, slurm)
                    if st is not None and st.terminal:
                        # the helper writes its result before the job ends, unless the job was
                        # killed hard; on NFS the file may show here a little later
                        ended_at = ended_at or time.monotonic()
                        grace = _RESULT_GRACE if st.state in ("COMPLETED", "FAILED") else 5.0
                        if time.monotonic() - ended_at > grace:
                            break
                    time.sleep(1.0 if running else 0.5)
                poll_stderr()
            return job_id, self._await_end(job_id, slurm, 30.0)
        finally:
            watcher.forget(job_id)

    def _pending(
        self,
        logger: logging.Logger,
        job_id: str,
        reason: str,
        last: Tuple[str, float],
        files: Dict[str, str],
        slurm: slurm_mod.Slurm,
    ) -> Tuple[str, float]:
        """A pending job: log Slurm's reason when it changes; cancel the job and fail the task
        when Slurm will never start it, or it waited ``pending_timeout`` for one reason."""
        ss = self._slurm_settings
        assert ss is not None
        reason = slurm_mod.pending_reason(reason)
        if reason != last[0]:
            if reason:
                notice(logger, _("slurm job pending", job_id=job_id, reason=reason))
            last = (reason, time.monotonic())
        verdict = slurm_mod.pending_verdict(
            job_id, reason, time.monotonic() - last[1], ss.pending_timeout
        )
        if verdict is not None:
            # the job must never run the attempt once the task has failed: take its claim
            holder = protocol.claim(files["claim"], "cancelled") or ""
            slurm.cancel(sorted(j for j in {job_id, holder} if j.isdigit()), logger)
            self._await_end(job_id, slurm, 60.0)
            logger.error(_(verdict, job_id=job_id, reason=reason))
            raise slurm_mod.SlurmError(verdict)
        return last

    @staticmethod
    def _await_end(job_id: str, slurm: slurm_mod.Slurm, timeout: float) -> str:
        """The job's final state, once Slurm has settled it (COMPLETING → ...); from its
        accounting (``sacct``) when the controller no longer knows the job (``MinJobAge``)."""
        deadline = time.monotonic() + timeout
        state = ""
        while True:
            info = slurm.show(job_id)
            state = info.get("JobState", "UNKNOWN") if info else "UNKNOWN"
            if state == "UNKNOWN":
                state = slurm.recorded_end(job_id) or state
            if state in slurm_mod.TERMINAL or state == "UNKNOWN" or time.monotonic() > deadline:
                return state
            time.sleep(0.5)

    def _conclude(
        self,
        logger: logging.Logger,
        job_id: str,
        state: str,
        files: Dict[str, str],
        plan: TaskPlan,
        mem: int,
        minutes: int,
        record: usage_record.AttemptRecord,
    ) -> int:
        result = protocol.read_result(files["result"])
        where = result.node if result is not None else ""
        record.image = plan.image_label
        assert self._slurm is not None
        recorded = self._slurm.accounting(job_id)  # sacct's view, where the cluster keeps one
        if recorded is not None and record.slurm is not None:
            record.slurm["max_rss_bytes"] = recorded.max_rss_bytes
            record.slurm["total_cpu_seconds"] = recorded.total_cpu_seconds
        if result is not None:
            assert record.slurm is not None
            record.slurm["node"] = result.node or None
            record.image_id = result.image_id or None
            record.image_digest = result.image_digest or None
            # the node got the image before the container started: not time in the queue
            record.seconds["image"] = result.image_seconds
            if record.seconds["waiting"] is not None:
                waiting = record.seconds["waiting"] - result.image_seconds
                record.seconds["waiting"] = round(max(0.0, waiting), 3)
        notice(logger, _("slurm job ended", job_id=job_id, state=state, node=where,
                         exit_code=result.exit_code if result else None,
                         image_digest=result.image_digest if result else None))  # fmt: skip
        if result is not None:
            logger.info(_("slurm node helper result", **asdict(result)))
        killed = slurm_mod.classify(
            state, job_id=job_id, node=where, memory_bytes=mem, time_minutes=minutes
        )
        has_exit = result is not None and result.exit_code is not None
        if killed and (state != "OUT_OF_MEMORY" or not has_exit):
            message, interrupted = killed
            logger.error(_(message, job_id=job_id, state=state))
            if interrupted:
                raise Interrupted(message)
            raise slurm_mod.SlurmError(message)
        if result is not None and result.error:
            raise result.exception(f"on {where}, Slurm job {job_id}", plan.image)
        if result is not None and result.terminated:
            message = (
                f"the node helper of Slurm job {job_id} on {where} was stopped by a signal"
                f" (job state {state}) before the task ended"
            )
            logger.error(_(message))
            raise Interrupted(message)
        if result is None or result.exit_code is None:
            tail = _tail(files["log"])
            message = (
                f"the node helper of Slurm job {job_id} ended ({state}) without a result"
                + (f": {tail}" if tail else "")
                + f"; its log is {files['log']}. Check that miniwdl_podman is installed for"
                f" [{settings_mod.SLURM_SECTION}] node_python on the compute nodes, and that"
                " `srun miniwdl-podman doctor` passes there"
            )
            logger.error(_(message))
            if state in ("UNKNOWN", "CANCELLED"):
                raise Interrupted(message)
            raise ContainerFailed(message)
        outcome = exits.Outcome(
            exits.Exit(result.exit_code, result.oom_killed or state == "OUT_OF_MEMORY"),
            result.peak_rss,
            result.cpu_seconds,
            result.samples,
        )
        self._record_outcome(record, outcome)
        self._report_usage(logger, outcome)
        code = outcome.exit.code
        if not self.success_exit_code(code):
            self._explain_failure(logger)
            self._explain_kill(logger, outcome, exits.MemoryContext(mem, slurm_job=job_id))
        return code


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])
