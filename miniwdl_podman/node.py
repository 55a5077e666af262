"""The Slurm backend's node helper: ``python -m miniwdl_podman node-run JOB.json``.

Runs inside the task's Slurm job on the compute node, as the user. It first claims the task
attempt (:func:`claim`): a second job for the same attempt exits without running anything. Then
it starts a private Podman API service of its own inside the job (so the container's conmon and
processes stay in the job's cgroup, where Slurm accounts for them, enforces the job's memory
and kills them with the job), on node-local storage; then it runs the task's
:class:`~miniwdl_podman.plan.TaskPlan` through the same
:class:`~miniwdl_podman.launch.Launcher` as the local backend, gives back files owned by other
uids, and writes a result file next to the plan for the login side. On SIGTERM (scancel, the
time limit) it kills and removes the container and reports that.

Exit status: the command's, or 1 when the helper itself failed (the result says why).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import asdict, fields
from typing import Any, Dict, List, Optional

from WDL.runtime.error import Interrupted, Terminated

from .plan import TaskPlan
from .runtime import Runtime, open_runtime
from .settings import Settings

RESULT_VERSION = 1


def settings_to_json(settings: Settings) -> Dict[str, Any]:
    """Settings as JSON-able data."""
    return asdict(settings)


def settings_from_json(raw: Dict[str, Any]) -> Settings:
    """Settings back from :func:`settings_to_json` (lists back to tuples)."""
    known = {f.name for f in fields(Settings)}
    values: Dict[str, Any] = {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in known
    }
    return Settings(**values)


def node_settings(settings: Settings, storage: str, runtime_dir: str) -> Settings:
    """The compute node's settings: the user's ``[podman_rootless]`` ones, but always a
    private service inside the job (cgroupfs manager, so the container stays in the job's
    cgroup), on node-local storage when ``storage`` is set."""
    args: List[str] = ["--cgroup-manager=cgroupfs"]
    if storage:
        args += ["--root", os.path.join(storage, "root"), "--runroot", os.path.join(storage, "run")]
    return Settings(
        **{
            **asdict(settings),
            "socket": "",
            "service": "private",
            "runtime_dir": runtime_dir,
            "service_args": tuple(args) + tuple(settings.service_args),
        }
    )


def write_json_atomic(path: str, data: Dict[str, Any]) -> None:
    """Write JSON so that a reader on another host never sees half of it."""
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
    with open(tmp, "w") as out:
        json.dump(data, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def write_job(
    base: str, plan: TaskPlan, settings: Settings, storage: str = "", runtime_dir: str = ""
) -> Dict[str, str]:
    """Write the job file that ``node-run`` reads (``BASE.json``) for one task attempt, and
    clear what an earlier job of that attempt left; the paths of the attempt's files by kind
    (json, result, started, claim, log)."""
    files = {k: f"{base}.{k}" for k in ("json", "result", "started", "claim", "log")}
    for stale in ("result", "started", "claim"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(files[stale])
    write_json_atomic(
        files["json"],
        {
            "plan": json.loads(plan.to_json()),
            "settings": settings_to_json(settings),
            "storage": storage,
            "runtime_dir": runtime_dir,
            "result": files["result"],
            "started": files["started"],
            "claim": files["claim"],
        },
    )
    return files


def claim(path: str, holder: str) -> Optional[str]:
    """Take a task attempt's claim file for ``holder`` (a Slurm job id, or ``cancelled``): None
    if it is now ours, else who holds it ("" if unreadable).

    Whoever holds the claim decides the attempt: only that job runs it. A second job for the
    same attempt (sbatch lost its answer, and the backend submitted again) finds the claim
    taken and exits without running anything; the login side takes it when the run is
    cancelled, so that a job still queued never runs the attempt. ``link`` is atomic and fails
    if the name exists, also on NFS, where a link whose answer was lost is told by the link
    count of the temporary file.
    """
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as out:
        out.write(holder)
        out.flush()
        os.fsync(out.fileno())
    try:
        with contextlib.suppress(OSError):
            os.link(tmp, path)
        mine = os.stat(tmp).st_nlink > 1
    finally:
        os.unlink(tmp)
    return None if mine else read_claim(path)


def read_claim(path: str) -> str:
    """Who holds a task attempt's claim ("" if nobody, yet)."""
    try:
        with open(path) as infile:
            return infile.read().strip()
    except OSError:
        return ""


def _logger() -> logging.Logger:
    logger = logging.getLogger("miniwdl-podman-node")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logging.addLevelName(logging.INFO + 5, "NOTICE")
    return logger


def main(argv: Optional[List[str]] = None) -> int:
    """Run one task attempt's container from its job file; write its result."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m miniwdl_podman node-run JOB.json", file=sys.stderr)
        return 2
    with open(args[0]) as infile:
        job = json.load(infile)
    result_path: str = job["result"]
    logger = _logger()
    node = socket.gethostname()
    me = os.environ.get("SLURM_JOB_ID") or f"{node}:{os.getpid()}"
    holder = claim(job["claim"], me)
    if holder is not None:
        logger.warning(
            "this task attempt is taken by %s; this job exits without running it (its"
            " submission was repeated after sbatch lost an answer, or the run was cancelled)",
            holder or "another job",
        )
        return 0
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logger.warning("received %s: killing the task container", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    result: Dict[str, Any] = {"version": RESULT_VERSION, "node": node}
    runtime: Optional[Runtime] = None
    code = 1
    try:
        plan = TaskPlan.from_json(json.dumps(job["plan"]))
        settings = settings_from_json(job["settings"])
        storage = os.path.expandvars(job.get("storage", ""))
        settings = node_settings(settings, storage, os.path.expandvars(job.get("runtime_dir", "")))
        if storage:
            os.makedirs(storage, mode=0o700, exist_ok=True)
        # coordination: one pull/build per image among the user's jobs on this node
        runtime = open_runtime(settings, logger, pool_size=8)
        launcher = runtime.launcher

        def running() -> None:
            with open(job["started"], "w") as out:
                out.write(node)

        outcome = launcher.run(plan, logger, stop.is_set, running=running)
        launcher.settle_ownership(plan.writable, logger)
        code = outcome.exit.code
        result.update(
            exit_code=code,
            oom_killed=outcome.exit.oom_killed,
            peak_rss=outcome.peak_rss,
            cpu_seconds=outcome.cpu_seconds,
            samples=outcome.samples,
        )
    except Terminated:
        result.update(terminated=True)
        code = 143
    except Exception as exn:  # reported to the login side, which raises the same kind
        logger.error("%s: %s", type(exn).__name__, exn)
        result.update(
            error=type(exn).__name__,
            message=str(exn),
            interrupted=isinstance(exn, Interrupted),
        )
        code = 1
    finally:
        if runtime is not None:
            runtime.close(logger)
    write_json_atomic(result_path, result)
    return code
