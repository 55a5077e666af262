"""Slurm: what to ask ``sbatch`` for, one place that runs Slurm's commands, and what a job's end
means.

The Slurm backend submits each task attempt as one batch job (``sbatch``, not ``--wait``): the
job runs the node helper, which writes a result file on the shared file system when the
container ends, so the login side learns of a task's end within a second by watching that file
instead of through ``sbatch --wait``'s polling (2 s, then 8 s, then 32 s...). One
:class:`JobWatcher` thread asks ``squeue`` about every job of the process at once every few
seconds, to notice jobs that end without a result (node failure, preemption, a kill before
the helper could write). Pure functions compute the ``sbatch`` arguments and classify a job's
end; they are unit-tested.
"""

from __future__ import annotations

import itertools
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from WDL._util import StructuredLogMessage as _
from WDL.runtime.error import Terminated

from . import _backoff, exits
from .errors import ContainerFailed
from .host import pid_alive
from .mounts import api_safe
from .settings import SLURM_SECTION, SlurmSettings

COMMENT_PREFIX = "miniwdl-podman:"

# job states (squeue/scontrol long names) after which nothing more will happen
TERMINAL = frozenset(
    ["BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
     "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT", "REVOKED"]
)  # fmt: skip
# ends caused by the cluster rather than the task: retried as Interrupted (runtime.preemptible)
INTERRUPTED = frozenset(["BOOT_FAIL", "NODE_FAIL", "PREEMPTED", "REVOKED", "CANCELLED"])


class SlurmError(ContainerFailed):
    """Slurm refused or lost a task's job."""


# what to check when Slurm refuses a job, or will never start it
_CHECK_THE_ASK = (
    "check the task's runtime (cpu, memory, gpu, time_minutes, slurm_partition, slurm_account,"
    " slurm_constraint, gpuType, gpuCount) against the partition, and"
    f" [{SLURM_SECTION}] extra_args / gpu_gres"
)
# pending reasons that mean Slurm will never start the job as it was asked for
HOPELESS = frozenset(
    ["PartitionConfig", "PartitionTimeLimit", "PartitionNodeLimit", "BadConstraints",
     "InvalidAccount", "InvalidQOS", "DependencyNeverSatisfied"]
)  # fmt: skip


def pending_reason(raw: str) -> str:
    """Slurm's reason for a pending job; empty for its words for none (``None``: about to be
    scheduled)."""
    return "" if raw.strip() in ("", "None", "(null)") else raw.strip()


def pending_verdict(
    job_id: str, reason: str, seconds_in_reason: float, pending_timeout: float
) -> Optional[str]:
    """Why a pending job's task should fail now (None: keep waiting): a reason Slurm never
    gets over, or one that lasted ``pending_timeout`` seconds (0: no limit)."""
    fix = f"{_CHECK_THE_ASK} (`scontrol show partition`)"
    if not reason:
        return None
    if reason in HOPELESS:
        return f"Slurm will never start the task's job {job_id} as asked (pending: {reason}); {fix}"
    if pending_timeout > 0 and seconds_in_reason >= pending_timeout:
        return (
            f"the task's Slurm job {job_id} was still pending after {seconds_in_reason:.0f} s"
            f" for one reason: {reason} (`squeue -j {job_id}` says more); {fix}, or raise"
            f" [{SLURM_SECTION}] pending_timeout (0: wait as long as Slurm does)"
        )
    return None


# runtime keys that place a task's job, named and meant as miniwdl-slurm reads them, so that a
# WDL written for it runs unchanged: text keys, and gpuCount (a whole number)
PLACEMENT_TEXT_KEYS = (
    "slurm_partition", "slurm_partition_gpu", "slurm_account", "slurm_account_gpu",
    "slurm_constraint", "gpuType",
)  # fmt: skip
PLACEMENT_COUNT_KEY = "gpuCount"
# the sbatch options they set (long and short forms): a site default in extra_args gives way
_PLACEMENT_OPTIONS = {
    "partition": ("--partition", "-p"),
    "account": ("--account", "-A"),
    "constraint": ("--constraint", "-C"),
    "gres": ("--gres",),
}


@dataclass(frozen=True)
class Placement:
    """Where a task's job goes: ``--partition``, ``--account``, ``--constraint``, ``--gres``
    (empty: not asked)."""

    partition: str = ""
    account: str = ""
    constraint: str = ""
    gres: str = ""


def placement(runtime_values: Mapping[str, Any], settings: SlurmSettings) -> Placement:
    """A task's placement from its runtime values, as miniwdl-slurm places it: a task asking
    for GPUs (runtime.gpu) takes ``slurm_partition_gpu``/``slurm_account_gpu`` where given, and
    ``--gres=gpu[:gpuType]:gpuCount`` where either is given (else the site's ``gpu_gres``);
    gpuCount and gpuType mean nothing without runtime.gpu."""
    gpu = bool(runtime_values.get("gpu", False))

    def text(key: str) -> str:
        if gpu and runtime_values.get(f"{key}_gpu"):
            return str(runtime_values[f"{key}_gpu"])
        return str(runtime_values.get(key) or "")

    gres = ""
    if gpu:
        count, kind = runtime_values.get(PLACEMENT_COUNT_KEY), runtime_values.get("gpuType")
        if count or kind:
            gres = "gpu:" + (f"{kind}:" if kind else "") + str(max(1, int(count or 1)))
        else:
            gres = settings.gpu_gres
    return Placement(
        partition=text("slurm_partition"),
        account=text("slurm_account"),
        constraint=str(runtime_values.get("slurm_constraint") or ""),
        gres=gres,
    )


def sbatch_args(
    settings: SlurmSettings,
    *,
    job_name: str,
    cpu: int,
    memory_bytes: int,
    time_minutes: int,
    placement: Placement,
    output: str,
    workdir: str,
    comment: str,
    command: Sequence[str],
) -> List[str]:
    """The ``sbatch`` command line for one task attempt (everything but the executable); the
    task's :class:`Placement` replaces the same options in ``extra_args``.

    Slurm reads ``%`` and ``\\`` in ``--output`` as its filename patterns and cannot open a
    path with bytes that are not UTF-8: when ``output`` or ``workdir`` holds any of them (see
    :func:`slurm_path_safe`), the job's own shell writes the log (``exec >>LOG``, the path
    quoted in the script byte for byte) and the job starts in ``/``.
    """
    wrap = "exec " + " ".join(shlex.quote(c) for c in command)
    if not (slurm_path_safe(output) and slurm_path_safe(workdir)):
        wrap = f"exec >>{shlex.quote(output)} 2>&1; {wrap}"
        output, workdir = "/dev/null", "/"
    args = [
        "--parsable",
        f"--job-name={job_name}",
        "--ntasks=1",
        # a preempted or node-failed job must end (PREEMPTED/NODE_FAIL), not rerun by itself:
        # miniwdl retries it, in a fresh work dir, under runtime.preemptible
        "--no-requeue",
        f"--cpus-per-task={max(1, cpu)}",
        f"--output={output}",
        # two jobs of one attempt (a lost sbatch answer) share the log: never truncate it
        "--open-mode=append",
        f"--chdir={workdir}",
        f"--comment={comment}",
    ]
    if memory_bytes > 0:
        args.append(f"--mem={max(1, -(-memory_bytes // 2**20))}M")  # MiB, rounded up
    minutes = time_minutes or settings.time_minutes
    if minutes > 0:
        args.append(f"--time={minutes}")
    extra = list(settings.extra_args)
    for field, options in _PLACEMENT_OPTIONS.items():
        value = getattr(placement, field)
        if value:
            # the task's own placement wins over a site default given in extra_args
            args.append(f"{options[0]}={value}")
            extra = _drop_options(extra, options)
    if memory_bytes > 0:
        # sbatch refuses --mem beside a site default of --mem-per-cpu/--mem-per-gpu given in
        # extra_args: the task's own runtime.memory wins; tasks without it keep the default
        extra = _drop_options(extra, ("--mem-per-cpu", "--mem-per-gpu"))
    args.extend(extra)
    args.append(f"--wrap={wrap}")
    return args


def slurm_path_safe(path: str) -> bool:
    """Whether sbatch takes ``path`` as ``--output``/``--chdir`` byte for byte."""
    return api_safe(path) and "%" not in path and "\\" not in path


def _drop_options(args: Sequence[str], names: Sequence[str]) -> List[str]:
    """``args`` without the options ``names``, given as ``--name=value`` or ``--name value``."""
    ans: List[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name, eq, _value = arg.partition("=")
        if name in names:
            skip_value = not eq
            continue
        ans.append(arg)
    return ans


class Owner(NamedTuple):
    """The miniwdl process that submitted a job: pid and start time (``started``: empty in
    older runs' comments) on ``host``."""

    pid: int
    host: str
    started: str = ""


def job_comment(pid: int, started: str, host: str, token: str) -> str:
    """The comment that marks a job as ours: a later run reaps jobs whose process is gone (its
    pid no longer runs, or runs another process: another start time), and ``token`` (one per
    submission) finds a job whose submission seemed to fail."""
    return f"{COMMENT_PREFIX}{pid}{'.' + started if started else ''}@{host}/{token}"


def parse_comment(comment: str) -> Optional[Owner]:
    """The :class:`Owner` from :func:`job_comment`'s text; None for other jobs."""
    if not comment.startswith(COMMENT_PREFIX):
        return None
    who, sep, rest = comment[len(COMMENT_PREFIX) :].partition("@")
    pid, _dot, started = who.partition(".")
    if not sep or not pid.isdigit() or not (started == "" or started.isdigit()):
        return None
    return Owner(int(pid), rest.split("/", 1)[0], started)


# what sbatch says when Slurm's controller is down, restarting, failing over or overloaded:
# worth trying again (the job may even have been taken before the answer was lost)
_TRANSIENT_SBATCH = (
    "unable to contact slurm controller",
    "socket timed out",
    "temporarily unavailable",
    "temporarily unable",
    "zero bytes were transmitted",
    "connection refused",
    "did not answer within",
)


# ... of which these mean the request never reached the controller (no job can have been taken)
_NOT_SENT = ("connect failure", "connection refused")


def transient_submit_error(said: str) -> bool:
    """Whether sbatch's failure is Slurm's passing state rather than a refusal of the job."""
    low = said.lower()
    return any(marker in low for marker in _TRANSIENT_SBATCH)


def submission_may_have_landed(said: str) -> bool:
    """Whether a transient sbatch failure may hide a job Slurm took (the answer was lost)."""
    low = said.lower()
    return not any(marker in low for marker in _NOT_SENT)


def job_with_comment(jobs: Dict[str, JobState], comment: str) -> Optional[str]:
    """The id of the job carrying exactly ``comment`` (a submission's own), if any."""
    ids = sorted((j.job_id for j in jobs.values() if j.comment == comment), key=int)
    return ids[0] if ids else None


def parse_squeue(text: str) -> Dict[str, JobState]:
    """``squeue -h -o '%i|%T|%r|%N|%k'`` output, by job id."""
    ans: Dict[str, JobState] = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 4)
        if len(parts) == 5 and parts[0]:
            ans[parts[0]] = JobState(parts[0], parts[1], parts[2], parts[3], parts[4])
    return ans


def parse_scontrol(text: str) -> Dict[str, str]:
    """``scontrol show job -o ID`` output (``Key=Value`` pairs) as a dict."""
    ans: Dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key not in ans:
            ans[key] = value
    return ans


@dataclass(frozen=True)
class Accounting:
    """What Slurm's accounting (``sacct``) recorded of a finished job: it outlives the
    controller's memory of the job (``MinJobAge``)."""

    state: str = ""  # the allocation's final state, e.g. COMPLETED ("" : not recorded)
    exit_code: str = ""  # Slurm's EXIT:SIGNAL
    node: str = ""
    max_rss_bytes: Optional[int] = None  # the largest of its steps'
    total_cpu_seconds: Optional[float] = None


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def slurm_size(text: str) -> Optional[int]:
    """``sacct``'s sizes (``1234K``, ``1.5G``; bare: bytes) in bytes; None when empty."""
    text = text.strip()
    if not text:
        return None
    unit = text[-1].upper() if text[-1].isalpha() else ""
    try:
        return int(float(text[: len(text) - len(unit)]) * _SIZE_UNITS[unit])
    except (KeyError, ValueError):
        return None


def slurm_duration(text: str) -> Optional[float]:
    """``sacct``'s durations (``[DD-][HH:]MM:SS[.mmm]``) in seconds; None when empty."""
    text = text.strip()
    if not text:
        return None
    days = 0
    if "-" in text:
        d, _, text = text.partition("-")
        days = int(d) if d.isdigit() else 0
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        return None
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return days * 86400 + seconds


def parse_sacct(text: str, job_id: str) -> Optional[Accounting]:
    """``sacct -n -P -o JobID,State,ExitCode,NodeList,MaxRSS,TotalCPU -j ID`` output: the
    allocation's line and its steps' (``ID.batch``...), or None if the job is not there."""
    state = exit_code = node = ""
    rss: Optional[int] = None
    cpu: Optional[float] = None
    seen = False
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 6:
            continue
        jid, st, code, where, max_rss, total_cpu = parts[:6]
        if jid == job_id:
            seen = True
            state = st.split()[0] if st.strip() else ""  # "CANCELLED by 1001"
            exit_code, node = code, where
            cpu = slurm_duration(total_cpu)
        elif jid.startswith(job_id + "."):
            step = slurm_size(max_rss)
            if step is not None:
                rss = step if rss is None else max(rss, step)
    if not seen:
        return None
    return Accounting(state, exit_code, node, rss, cpu)


@dataclass(frozen=True)
class JobState:
    """What Slurm says of a job."""

    job_id: str
    state: str
    reason: str = ""
    nodes: str = ""
    comment: str = ""

    @property
    def terminal(self) -> bool:
        """Whether the job has ended (``UNKNOWN``: Slurm forgot it, so it ended long ago)."""
        return self.state in TERMINAL or self.state == "UNKNOWN"


def classify(
    state: str,
    *,
    job_id: str,
    node: str,
    memory_bytes: int,
    time_minutes: int,
) -> Optional[Tuple[str, bool]]:
    """(message, interrupted) for a job Slurm ended for a reason of its own, or None when the
    task's own exit status tells the story (COMPLETED, FAILED). ``interrupted``: the cluster's
    doing (node failure, preemption, cancelled by someone), retried under runtime.preemptible."""
    where = f"Slurm job {job_id}" + (f" on {node}" if node else "")
    if state == "OUT_OF_MEMORY":
        memory = exits.MemoryContext(memory_bytes, slurm_job=job_id)
        return (exits.job_out_of_memory(memory, where), False)
    if state == "TIMEOUT":
        limit = f"{time_minutes} min" if time_minutes else "the partition's default"
        return (
            f"{where} was killed at its time limit ({limit}); raise runtime.time_minutes, or"
            f" [{SLURM_SECTION}] time_minutes for tasks that do not set it",
            False,
        )
    if state == "DEADLINE":
        return (f"{where} missed its --deadline (set in [{SLURM_SECTION}] extra_args)", False)
    if state in ("NODE_FAIL", "BOOT_FAIL"):
        return (f"{where} was lost: its node failed ({state})", True)
    if state in ("PREEMPTED", "REVOKED"):
        return (f"{where} was preempted by Slurm ({state})", True)
    if state == "CANCELLED":
        return (f"{where} was cancelled by someone else (scancel or an administrator)", True)
    return None


def cluster_limits(sinfo_output: str) -> Optional[Dict[str, int]]:
    """The largest node's CPUs and memory from ``sinfo -h -o '%c %m'`` (memory in MB), as
    miniwdl's resource limits; None if there is no node."""
    cpu = mem = 0
    for line in sinfo_output.splitlines():
        fields = line.replace("+", "").split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            cpu, mem = max(cpu, int(fields[0])), max(mem, int(fields[1]))
    if not cpu:
        return None
    return {"cpu": cpu, "mem_bytes": mem * 2**20}


# -- the one place that runs Slurm's commands -------------------------------------------------


def _clean_env() -> Dict[str, str]:
    """The environment for Slurm commands: without the SLURM_* variables of an allocation
    miniwdl itself may run in (so each task is a job of its own, sized for the task)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


class Slurm:
    """Runs ``sbatch``, ``squeue``, ``scancel``, ``scontrol``, ``sacct`` and ``sinfo`` (found
    beside ``sbatch``)."""

    def __init__(self, settings: SlurmSettings) -> None:
        exe = shutil.which(settings.sbatch)
        if not exe:
            raise SlurmError(
                f"{settings.sbatch!r} not found, so no task can be submitted to Slurm; run on"
                f" a Slurm login node, or set [{SLURM_SECTION}] sbatch to its path"
                f" (env MINIWDL__{SLURM_SECTION.upper()}__SBATCH)"
            )
        self.sbatch_exe = exe
        self.bin_dir = os.path.dirname(exe)
        self.submit_timeout = settings.submit_timeout
        self._no_accounting = False

    def _exe(self, name: str) -> str:
        beside = os.path.join(self.bin_dir, name)
        return beside if os.access(beside, os.X_OK) else name

    def _run(
        self, name: str, args: Sequence[str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self._exe(name), *args],
            capture_output=True,
            text=True,
            errors="surrogateescape",  # paths Slurm echoes back keep their bytes
            timeout=timeout,
            env=_clean_env(),
        )

    def _sbatch(self, args: Sequence[str]) -> Tuple[str, str]:
        """Run sbatch once: (job id, "") or ("", what went wrong)."""
        try:
            proc = subprocess.run(
                [self.sbatch_exe, *args], capture_output=True, text=True, timeout=120,
                errors="surrogateescape", env=_clean_env(),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return "", "sbatch did not answer within 120 s"
        except (OSError, subprocess.SubprocessError) as exn:
            raise SlurmError(f"sbatch failed to run: {exn}") from None
        job_id = proc.stdout.strip().split(";")[0]
        if proc.returncode == 0 and job_id.isdigit():
            return job_id, ""
        return "", proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}"

    def submit(
        self,
        args: Sequence[str],
        comment: str,
        logger: logging.Logger,
        terminating: Callable[[], bool],
    ) -> str:
        """Submit a job whose ``--comment`` is ``comment``; its id.

        While Slurm's controller does not answer (restart, failover, overload), sbatch is
        tried again with backoff for up to ``submit_timeout`` seconds. After a failure that
        may hide a job Slurm took (a timeout: the answer was lost), squeue is asked, once it
        answers, for a job carrying ``comment``, which is adopted instead of submitting
        another. Raises SlurmError with sbatch's own words when Slurm refuses the job, or
        when the controller did not answer in time; Terminated if the run is cancelled
        meanwhile.
        """
        deadline = time.monotonic() + self.submit_timeout
        for attempt in itertools.count(1):
            # 2 s doubling to 30 s, jittered (many tasks submitted together do not retry together)
            delay = _backoff.delay(attempt - 1, 2.0, 30.0)
            job_id, said = self._sbatch(args)
            if job_id:
                return job_id
            if not transient_submit_error(said):
                raise SlurmError(f"Slurm refused the task's job: {said}; {_CHECK_THE_ASK}")
            logger.warning(_("sbatch failed; Slurm's controller may be restarting or swamped",
                             error=said, attempt=attempt))  # fmt: skip
            if submission_may_have_landed(said):
                adopted = self._taken_job(comment, deadline, terminating)
                if adopted:
                    logger.warning(_("sbatch failed, but Slurm had taken the job",
                                     job_id=adopted))  # fmt: skip
                    return adopted
            if time.monotonic() + delay > deadline:
                raise SlurmError(
                    f"Slurm's controller did not take the task's job within"
                    f" {self.submit_timeout:g} s: {said}; check that `sinfo` answers, or raise"
                    f" [{SLURM_SECTION}] submit_timeout"
                    f" (env MINIWDL__{SLURM_SECTION.upper()}__SUBMIT_TIMEOUT)"
                )
            logger.info(_("trying sbatch again", retry_in_seconds=round(delay, 1)))
            _sleep(delay, terminating)
        raise AssertionError("unreachable")

    def _taken_job(
        self, comment: str, deadline: float, terminating: Callable[[], bool]
    ) -> Optional[str]:
        """The job carrying ``comment``, asked once squeue answers again (a frozen or swamped
        controller may still be taking the submission whose answer was lost); None if there
        is none, or if squeue does not answer before ``deadline``."""
        while True:
            try:
                return job_with_comment(self.states(user=True), comment)
            except (OSError, subprocess.SubprocessError):
                if time.monotonic() > deadline:
                    return None
            _sleep(2.0, terminating)

    def states(self, job_ids: Iterable[str] = (), user: bool = False) -> Dict[str, JobState]:
        """squeue's view of the given jobs (or of all of this user's jobs), finished ones
        included while Slurm remembers them. Raises OSError/SubprocessError on failure."""
        args = ["-h", "--states=all", "-o", "%i|%T|%r|%N|%k"]
        ids = sorted(set(job_ids))
        if ids:
            args.append("--jobs=" + ",".join(ids))
        if user:
            args.append(f"--user={os.geteuid()}")
        proc = self._run("squeue", args)
        if proc.returncode != 0 and ids:
            # an id Slurm has forgotten makes squeue fail: ask one by one
            ans: Dict[str, JobState] = {}
            for job_id in ids:
                one = self._run("squeue", ["-h", "--states=all", "-o", "%i|%T|%r|%N|%k",
                                           f"--jobs={job_id}"])  # fmt: skip
                ans.update(parse_squeue(one.stdout) if one.returncode == 0 else {})
            return ans
        if proc.returncode != 0:
            raise subprocess.SubprocessError(proc.stderr.strip())
        return parse_squeue(proc.stdout)

    def accounting(self, job_id: str) -> Optional[Accounting]:
        """What ``sacct`` recorded of the job; None when the cluster keeps no accounting
        (remembered: not asked again), sacct fails, or the job is not recorded (yet)."""
        if self._no_accounting:
            return None
        try:
            fields = "JobID,State,ExitCode,NodeList,MaxRSS,TotalCPU"
            proc = self._run("sacct", ["-n", "-P", "-j", job_id, "-o", fields])
        except (OSError, subprocess.SubprocessError):
            return None
        if proc.returncode != 0:
            if "accounting storage is disabled" in proc.stderr.lower():
                self._no_accounting = True
            return None
        return parse_sacct(proc.stdout, job_id)

    def recorded_end(self, job_id: str) -> str:
        """The final state the job's accounting recorded ("" : none, or not an end)."""
        recorded = self.accounting(job_id)
        return recorded.state if recorded is not None and recorded.state in TERMINAL else ""

    def show(self, job_id: str) -> Dict[str, str]:
        """``scontrol show job``'s fields for one job ({} if Slurm no longer knows it)."""
        try:
            proc = self._run("scontrol", ["show", "job", "-o", job_id])
        except (OSError, subprocess.SubprocessError):
            return {}
        return parse_scontrol(proc.stdout) if proc.returncode == 0 else {}

    def cancel(self, job_ids: Sequence[str], logger: logging.Logger) -> None:
        """``scancel`` the jobs (SIGTERM to the helper, which removes its container)."""
        if not job_ids:
            return
        try:
            proc = self._run("scancel", list(job_ids))
            if proc.returncode != 0:
                logger.warning(_("scancel failed", jobs=list(job_ids), error=proc.stderr.strip()))
        except (OSError, subprocess.SubprocessError) as exn:
            logger.warning(_("scancel failed", jobs=list(job_ids), error=str(exn)))

    def limits(self, logger: logging.Logger) -> Optional[Dict[str, int]]:
        """The largest node's CPUs and memory, or None if sinfo cannot say."""
        try:
            proc = self._run("sinfo", ["-h", "-o", "%c %m"])
        except (OSError, subprocess.SubprocessError) as exn:
            logger.warning(_("sinfo failed", error=str(exn)))
            return None
        return cluster_limits(proc.stdout) if proc.returncode == 0 else None

    def reap_dead_runs(self, logger: logging.Logger) -> List[str]:
        """Cancel this user's jobs left by miniwdl processes on this host that are gone
        (e.g. SIGKILLed): their comment names a dead pid here."""
        try:
            jobs = self.states(user=True)
        except (OSError, subprocess.SubprocessError):
            return []
        host = socket.gethostname()
        dead = []
        for job in jobs.values():
            owner = parse_comment(job.comment)
            if (
                owner
                and owner.host == host
                and not job.terminal
                and not pid_alive(owner.pid, owner.started)
            ):
                dead.append(job.job_id)
        if dead:
            logger.warning(_("cancelling Slurm jobs left by a dead miniwdl run", jobs=dead))
            self.cancel(dead, logger)
        return dead


def _sleep(seconds: float, terminating: Callable[[], bool]) -> None:
    """Sleep, but raise Terminated as soon as the run is cancelled."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if terminating():
            raise Terminated()
        time.sleep(0.25)


class JobWatcher:
    """This process's live Slurm jobs: one thread asks squeue about them all every ``period``
    seconds, and :meth:`live` lists them (for cancelling at exit)."""

    def __init__(self, slurm: Slurm, period: float, logger: logging.Logger) -> None:
        self._slurm = slurm
        self._period = period
        self._logger = logger
        self._lock = threading.Lock()
        self._jobs: Set[str] = set()
        self._states: Dict[str, JobState] = {}
        self._missing: Dict[str, int] = {}
        self._wake = threading.Event()
        threading.Thread(target=self._loop, name="slurm-job-watcher", daemon=True).start()

    def watch(self, job_id: str) -> None:
        with self._lock:
            self._jobs.add(job_id)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.discard(job_id)
            self._states.pop(job_id, None)
            self._missing.pop(job_id, None)

    def follow(self, old: Optional[str], new: Optional[str]) -> None:
        """Watch job ``new`` instead of ``old`` (either may be None)."""
        if old:
            self.forget(old)
        if new:
            self.watch(new)

    def live(self) -> List[str]:
        """The jobs being watched: those still to be cancelled if this process exits."""
        with self._lock:
            return sorted(self._jobs)

    def state(self, job_id: str) -> Optional[JobState]:
        """The job's latest state. Once squeue has not listed it three times running (the
        controller forgot it: it ended ``MinJobAge`` ago), the final state its accounting
        recorded (``sacct``, asked once), else a made-up ``UNKNOWN``; either is terminal."""
        with self._lock:
            missing = self._missing.get(job_id, 0) >= 3
            known = self._states.get(job_id)
        if not missing:
            return known
        if known is None or not known.terminal:
            known = JobState(job_id, self._slurm.recorded_end(job_id) or "UNKNOWN")
            with self._lock:
                if job_id in self._jobs:
                    self._states[job_id] = known
        return known

    def _loop(self) -> None:
        while True:
            self._wake.wait(_backoff.delay(0, self._period, self._period))
            self._wake.clear()
            with self._lock:
                jobs = set(self._jobs)
            if not jobs:
                continue
            try:
                states = self._slurm.states(jobs)
            except (OSError, subprocess.SubprocessError) as exn:
                self._logger.warning(_("squeue failed; will retry", error=str(exn)))
                continue
            with self._lock:
                for job_id in jobs & self._jobs:
                    if job_id in states:
                        self._states[job_id] = states[job_id]
                        self._missing.pop(job_id, None)
                    else:
                        self._missing[job_id] = self._missing.get(job_id, 0) + 1


def login_only_credentials(environ: Mapping[str, str]) -> Optional[str]:
    """Registry credentials that compute nodes will not see: no ``REGISTRY_AUTH_FILE``, and
    ``podman login``'s default file, under ``$XDG_RUNTIME_DIR`` (a per-host tmpfs), holds some.
    Their path, or None."""
    if environ.get("REGISTRY_AUTH_FILE"):
        return None
    xdg = environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(xdg, "containers", "auth.json") if xdg else ""
    return path if path and os.path.isfile(path) and os.path.getsize(path) > 0 else None


def node_command(python: str, job_file: str) -> List[str]:
    """What the job runs on the compute node."""
    return [python or sys.executable, "-m", "miniwdl_podman", "node-run", job_file]
