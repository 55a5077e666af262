"""The Slurm backend's node helper: ``python -m miniwdl_podman node-run JOB.json``.

Runs inside the task's Slurm job on the compute node, as the user. It reads the job file
(:mod:`~miniwdl_podman.protocol`: a file of another version is refused, naming both) and claims
the task attempt (:func:`~miniwdl_podman.protocol.claim`): a second job for the same attempt
exits without running anything. Then it starts a private Podman API service of its own inside
the job (so the container's conmon and processes stay in the job's cgroup, where Slurm accounts
for them, enforces the job's memory and kills them with the job), on node-local storage; then
it runs the task's :class:`~miniwdl_podman.plan.TaskPlan` through the same runtime
(:func:`~miniwdl_podman.runtime.open_runtime`) and launcher as the local backend, gives back
files owned by other uids, and writes a result file next to the plan for the login side. On
SIGTERM (scancel, the time limit) it kills and removes the container and reports that.

Exit status: the command's, or 1 when the helper itself failed (the result says why).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import replace
from typing import Any, List, Optional

from WDL.runtime.error import Terminated

from . import pins, protocol
from .runtime import Runtime, open_runtime
from .settings import node_path, node_settings


def _logger() -> logging.Logger:
    logger = logging.getLogger("miniwdl-podman-node")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logging.addLevelName(logging.INFO + 5, "NOTICE")
    return logger


def _pinned(
    runtime: Runtime, directory: str, image: str, logger: logging.Logger, stop: threading.Event
) -> str:
    """The reference this job runs for ``image``: the digest the run's first job got for that
    tag (:mod:`~miniwdl_podman.pins`), or the tag itself when this job is that first one."""

    def fetch() -> str:
        ref = runtime.engine.images.ensure(image, logger)
        return pins.digest_for(image, ref.repo_digests, ref.digest)

    return pins.RunPins(directory).resolve(image, fetch, logger, give_up=stop.is_set)


def main(argv: Optional[List[str]] = None) -> int:
    """Run one task attempt's container from its job file; write its result."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m miniwdl_podman node-run JOB.json", file=sys.stderr)
        return 2
    logger = _logger()
    node = socket.gethostname()
    try:
        job = protocol.read_job(args[0])
    except (OSError, protocol.ProtocolError) as exn:
        # tell the login side why, where the job file says the result goes (if it says)
        logger.error("%s", exn)
        where = protocol.result_path_of(args[0])
        if where:
            kind = protocol.error_kind(exn) or protocol.UNEXPECTED
            protocol.Result(node=node, error=kind, message=str(exn)).write(where)
        return 1
    me = os.environ.get("SLURM_JOB_ID") or f"{node}:{os.getpid()}"
    holder = protocol.claim(job.claim, me)
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
    runtime: Optional[Runtime] = None
    storage = ""
    result = protocol.Result(node=node)
    try:
        storage = node_path(job.storage, os.environ)
        settings = node_settings(job.settings, storage, node_path(job.runtime_dir, os.environ))
        if storage:
            os.makedirs(storage, mode=0o700, exist_ok=True)
        # coordination: one pull/build per image among the user's jobs on this node
        # an image staged in the shared store is run from there (the login side pinned it)
        pinned = {job.plan.image: job.staged} if job.staged is not None else {}
        runtime = open_runtime(settings, logger, pool_size=8, pinned=pinned)

        plan = job.plan
        if job.pins and job.staged is None and pins.pinnable(plan.image):
            plan = replace(plan, image=_pinned(runtime, job.pins, plan.image, logger, stop))
        with runtime.launcher.start(plan, logger) as task:
            with open(job.started, "w") as out:
                out.write(node)
            while (outcome := task.wait(1.0)) is None:
                if stop.is_set():
                    task.kill()
                    raise Terminated()
        runtime.launcher.settle_ownership(plan.writable, logger)
        result = protocol.Result(
            node=node,
            exit_code=outcome.exit.code,
            oom_killed=outcome.exit.oom_killed,
            peak_rss=outcome.peak_rss,
            cpu_seconds=outcome.cpu_seconds,
            samples=outcome.samples,
            image_id=task.image.id,
            image_digest=task.image.digest,
            image_seconds=round(task.image_seconds, 3),
        )
    except Terminated:
        result = protocol.Result(node=node, terminated=True)
    except Exception as exn:  # reported to the login side, which raises the same kind
        logger.error("%s: %s", type(exn).__name__, exn)
        kind = protocol.error_kind(exn)
        message = str(exn) if kind else f"{type(exn).__name__}: {exn}"
        result = protocol.Result(node=node, error=kind or protocol.UNEXPECTED, message=message)
    finally:
        if runtime is not None:
            runtime.close(logger)
            if storage and "%j" in job.storage:
                # a store of this job alone: its graph directory stays mounted in the user's
                # rootless namespace (which outlives the job when another process of the user
                # on this node holds it); release it, so the store can be removed
                error = runtime.engine.release_mounts(storage)
                if error:
                    logger.warning("could not release the job's store mounts: %s", error)
    result.write(job.result)
    if result.terminated:
        return 143
    return result.exit_code if result.exit_code is not None else 1
