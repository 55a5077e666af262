"""The usage record of one task attempt: a small versioned JSON file beside the task's log.

``usage.N.json`` in the task's directory (N: the attempt, 1 for the first try), written when
the attempt ends, whatever its end: what it asked for, what it was given and used, and where its
time went, for people's scripts and for a run report. Fields (:data:`FORMAT` 1; a value not
known is ``null``):

- ``format``, ``package`` (this package's version), ``backend``, ``run_id``, ``attempt``;
- ``image``, ``image_id``, ``image_digest``: what the container ran;
- ``requested``: ``cpu``, ``memory_bytes``, ``memory_limit_bytes``, ``gpu`` (runtime values);
- ``limits``: the hard limits Podman was asked to set (``cpu``, ``memory_bytes``; empty where the
  host enforces none);
- ``seconds``: ``waiting`` (for the scheduler's resources, locally; in Slurm's queue and the
  node helper's start, on Slurm), ``image`` (getting the image: pull, build, probe; 0 when the
  process already had it), ``container`` (from the container's start to its end), ``total``
  (the attempt);
- ``started``, ``ended``: Unix times of the attempt;
- ``exit_code``, ``oom_killed``, ``peak_rss_bytes``, ``cpu_seconds``, ``samples`` (usage sampled
  about once a second from the container's processes; 0 samples: it ended within a second);
- ``error``: the error that ended the attempt without an exit status (its type and message);
- ``slurm`` (the Slurm backend only): ``job_id``, ``node``, ``state``, and where the cluster
  keeps accounting, ``sacct``'s ``max_rss_bytes`` (its steps' MaxRSS) and
  ``total_cpu_seconds`` (TotalCPU);
- ``retry_reason``: for a retry, how the attempt before it ended (``exit status 1``, ``out of
  memory``, or its error), else null.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

from . import __version__
from .host import write_json_atomic

FORMAT = 1


@dataclass
class AttemptRecord:
    """One attempt's record, filled in as the attempt goes (see the module's field list)."""

    backend: str
    run_id: str
    attempt: int
    started: float
    requested: Dict[str, Any] = field(default_factory=dict)
    image: Optional[str] = None
    image_id: Optional[str] = None
    image_digest: Optional[str] = None
    limits: Dict[str, int] = field(default_factory=dict)
    seconds: Dict[str, Optional[float]] = field(
        default_factory=lambda: {"waiting": None, "image": None, "container": None, "total": None}
    )
    ended: Optional[float] = None
    exit_code: Optional[int] = None
    oom_killed: Optional[bool] = None
    peak_rss_bytes: Optional[int] = None
    cpu_seconds: Optional[float] = None
    samples: Optional[int] = None
    error: Optional[str] = None
    slurm: Optional[Dict[str, Any]] = None
    retry_reason: Optional[str] = None

    def write(self, task_dir: str, ended: float) -> str:
        """Write ``usage.N.json`` in ``task_dir`` (atomically); its path."""
        self.ended = ended
        self.seconds["total"] = round(ended - self.started, 3)
        path = os.path.join(task_dir, f"usage.{self.attempt}.json")
        write_json_atomic(path, {"format": FORMAT, "package": __version__, **asdict(self)})
        return path
