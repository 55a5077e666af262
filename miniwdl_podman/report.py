"""A run's usage, gathered from its tasks' usage records (:mod:`~miniwdl_podman.usage_record`).

Pure reading and arithmetic, no Podman: :func:`gather` walks a run directory's call
directories (sub-workflows included; not ``work/``, ``out/`` or the ``_LAST`` link) for
``usage.N.json`` files and for tasks still running without a record; :class:`Summary` is what
the report's first section, the TSV and the run-end log line say. The HTML page is
:mod:`~miniwdl_podman.report_html`.

Conventions: a task that does not set ``runtime.cpu`` reserves 1 CPU (as miniwdl's scheduler
counts it); CPU efficiency is CPU seconds over (CPUs reserved times the seconds the container ran);
memory use is peak RSS over the memory asked for (``runtime.memory``), or over the hard limit
when only that is known.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

_RECORD = re.compile(r"^usage\.(\d+)\.json$")
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)")


@dataclass(frozen=True)
class Attempt:
    """One task attempt: from its usage record, or (``running``) one still going without one."""

    task: str  # the task's directory relative to the run directory
    attempt: int
    record: Dict[str, Any]
    running: bool = False

    def _get(self, *keys: str) -> Any:
        value: Any = self.record
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    @property
    def started(self) -> float:
        return float(self._get("started") or 0.0)

    @property
    def ended(self) -> Optional[float]:
        value = self._get("ended")
        return float(value) if value is not None else None

    def seconds(self, phase: str) -> float:
        """Seconds of ``waiting``, ``image``, ``container`` or ``total`` (0 if not known)."""
        value = self._get("seconds", phase)
        return float(value) if isinstance(value, (int, float)) else 0.0

    @property
    def cpu_reserved(self) -> int:
        return int(self._get("requested", "cpu") or 1)

    @property
    def memory_requested(self) -> Optional[int]:
        value = self._get("requested", "memory_bytes")
        return int(value) if value else None

    @property
    def memory_limit(self) -> Optional[int]:
        value = self._get("requested", "memory_limit_bytes")
        return int(value) if value else None

    @property
    def peak_rss(self) -> Optional[int]:
        value = self._get("peak_rss_bytes")
        return int(value) if value is not None else None

    @property
    def cpu_seconds(self) -> Optional[float]:
        value = self._get("cpu_seconds")
        return float(value) if value is not None else None

    @property
    def exit_code(self) -> Optional[int]:
        value = self._get("exit_code")
        return int(value) if value is not None else None

    @property
    def error(self) -> str:
        return str(self._get("error") or "")

    @property
    def oom_killed(self) -> bool:
        return bool(self._get("oom_killed"))

    @property
    def state(self) -> str:
        """``running``, ``ok``, ``oom`` (killed for memory) or ``failed``."""
        if self.running:
            return "running"
        if self.oom_killed:
            return "oom"
        if self.exit_code == 0 and not self.error:
            return "ok"
        return "failed"

    @property
    def cpu_efficiency(self) -> Optional[float]:
        """CPU seconds used per CPU second reserved while the container ran (None: not known)."""
        ran = self.seconds("container")
        if self.cpu_seconds is None or ran <= 0:
            return None
        return self.cpu_seconds / (self.cpu_reserved * ran)

    @property
    def memory_use(self) -> Optional[float]:
        """Peak RSS over the memory asked for (else the hard limit); None: not known."""
        asked = self.memory_requested or self.memory_limit
        if self.peak_rss is None or not asked:
            return None
        return self.peak_rss / asked

    @property
    def node(self) -> str:
        return str(self._get("slurm", "node") or "")

    @property
    def job_id(self) -> str:
        return str(self._get("slurm", "job_id") or "")


@dataclass(frozen=True)
class Summary:
    """What a run used, over all its attempts."""

    run_dir: str
    finished: bool  # the run wrote its outputs
    tasks: int
    attempts: int
    failed_attempts: int
    failed_tasks: List[str]
    running: int
    start: float
    end: float
    cpu_hours_used: float
    cpu_hours_reserved: float
    peak_rss: int
    memory_asked: int  # the most any attempt asked for (runtime.memory)
    over_askers: List[Tuple[str, int, int]] = field(default_factory=list)  # task, asked, peak
    near_limit: List[Tuple[str, float]] = field(default_factory=list)  # task, peak / asked
    oom: List[str] = field(default_factory=list)

    @property
    def wall_seconds(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def cpu_efficiency(self) -> Optional[float]:
        if self.cpu_hours_reserved <= 0:
            return None
        return self.cpu_hours_used / self.cpu_hours_reserved


def _records(task_dir: str, names: List[str]) -> Iterator[Tuple[int, Dict[str, Any]]]:
    for name in names:
        m = _RECORD.match(name)
        if not m:
            continue
        try:
            with open(os.path.join(task_dir, name)) as f:
                raw = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(raw, dict):
            yield int(m.group(1)), raw


def _unrecorded(task: str, path: str) -> Attempt:
    """A task with a log but no usage record: still running, or (its log says so) failed
    before any attempt ran its container (e.g. the backend could not start)."""
    started, error = 0.0, ""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        m = _LOG_TIME.match(lines[0]) if lines else None
        if m:
            started = time.mktime(time.strptime(m.group(1).split(".")[0], "%Y-%m-%d %H:%M:%S"))
        else:
            started = os.stat(path).st_mtime
        error = next((ln.split(" ERROR ", 1)[1] for ln in lines if " ERROR " in ln), "")
    except OSError:
        pass
    if error:
        record = {"started": started, "ended": started, "seconds": {}, "error": error[:300]}
        return Attempt(task, 1, record)
    return Attempt(task, 1, {"started": started, "seconds": {}}, running=True)


def gather(run_dir: str) -> List[Attempt]:
    """Every attempt of the run's tasks, in order of start: the recorded ones, and a task that
    has begun (``task.log``) with no record and no outputs yet as one attempt: ``running``, or
    failed when its log has an error (it failed before any container ran)."""
    ans: List[Attempt] = []
    top = os.path.basename(os.path.abspath(run_dir))
    for here, dirs, files in os.walk(run_dir):
        # only calls' directories (sub-workflows' too): not work/, out/, nor the _LAST link
        dirs[:] = sorted(
            d for d in dirs if d.startswith("call-") and not os.path.islink(os.path.join(here, d))
        )
        rel = os.path.relpath(here, run_dir)
        task = top if rel == "." else rel
        found = list(_records(here, sorted(files)))
        for attempt, raw in found:
            ans.append(Attempt(task, attempt, raw))
        if not found and "task.log" in files and "outputs.json" not in files:
            ans.append(_unrecorded(task, os.path.join(here, "task.log")))
    ans.sort(key=lambda a: (a.started, a.task, a.attempt))
    return ans


def last_attempts(attempts: Sequence[Attempt]) -> Dict[str, Attempt]:
    """Each task's last attempt, by task."""
    last: Dict[str, Attempt] = {}
    for a in attempts:
        if a.task not in last or a.attempt >= last[a.task].attempt:
            last[a.task] = a
    return last


def summarize(run_dir: str, attempts: List[Attempt], now: Optional[float] = None) -> Summary:
    """The run's :class:`Summary`."""
    now = time.time() if now is None else now
    last = last_attempts(attempts)
    start = min((a.started for a in attempts if a.started), default=now)
    ends = [a.ended for a in attempts if a.ended is not None]
    running = [a for a in attempts if a.running]
    end = now if running or not ends else max(ends)
    used = sum(a.cpu_seconds or 0.0 for a in attempts)
    reserved = sum(a.cpu_reserved * a.seconds("container") for a in attempts)
    over: List[Tuple[str, int, int]] = []
    near: List[Tuple[str, float]] = []
    for task, a in last.items():
        if a.memory_requested and a.peak_rss is not None:
            over.append((task, a.memory_requested, a.peak_rss))
        if a.memory_use is not None:
            near.append((task, a.memory_use))
    over.sort(key=lambda t: (-(t[1] - t[2]), t[0]))
    near.sort(key=lambda t: (-t[1], t[0]))
    return Summary(
        run_dir=run_dir,
        finished=os.path.isfile(os.path.join(run_dir, "outputs.json")),
        tasks=len(last),
        attempts=len(attempts) - len(running),
        failed_attempts=sum(1 for a in attempts if a.state in ("failed", "oom")),
        failed_tasks=sorted(t for t, a in last.items() if a.state in ("failed", "oom")),
        running=len(running),
        start=start,
        end=end,
        cpu_hours_used=used / 3600,
        cpu_hours_reserved=reserved / 3600,
        peak_rss=max((a.peak_rss or 0 for a in attempts), default=0),
        memory_asked=max((a.memory_requested or 0 for a in attempts), default=0),
        over_askers=[t for t in over if t[1] > t[2]][:5],
        near_limit=near[:5],
        oom=sorted({a.task for a in attempts if a.state == "oom"}),
    )


def size(n: Optional[float]) -> str:
    """Bytes as people read them (``1.5 GiB``); ``-`` when not known."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def log_line(summary: Summary) -> Dict[str, Any]:
    """The fields of the one line that ends a run's log."""
    fields: Dict[str, Any] = {
        "tasks": summary.tasks,
        "attempts": summary.attempts,
        "failed_attempts": summary.failed_attempts,
        "cpu_hours_used": round(summary.cpu_hours_used, 4),
        "cpu_hours_reserved": round(summary.cpu_hours_reserved, 4),
        "peak_rss": size(summary.peak_rss),
    }
    if summary.over_askers:
        task, asked, peak = summary.over_askers[0]
        fields["worst_over_asker"] = f"{task} (asked {size(asked)}, peak {size(peak)})"
    fields["report"] = f"miniwdl-podman report {summary.run_dir}"
    return fields


TSV_COLUMNS = (
    "task", "attempt", "state", "exit_code", "error", "image", "image_id", "node", "job_id",
    "cpu_reserved", "memory_requested_bytes", "memory_limit_bytes", "gpu", "peak_rss_bytes",
    "cpu_seconds", "cpu_efficiency", "memory_use", "waiting_seconds", "image_seconds",
    "container_seconds", "total_seconds", "started", "ended", "retry_reason",
)  # fmt: skip


def _iso(t: Optional[float]) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) if t else ""


def tsv_rows(attempts: List[Attempt]) -> List[List[str]]:
    """One row per attempt, in :data:`TSV_COLUMNS` order (empty: not known)."""

    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("\t", " ").replace("\n", " ")

    rows = []
    for a in attempts:
        r = a.record
        rows.append([text(v) for v in (
            a.task, a.attempt, a.state, a.exit_code, a.error, r.get("image"),
            str(r.get("image_id") or "")[:12], a.node, a.job_id, a.cpu_reserved,
            a.memory_requested, a.memory_limit, (r.get("requested") or {}).get("gpu"),
            a.peak_rss, a.cpu_seconds, a.cpu_efficiency, a.memory_use,
            r.get("seconds", {}).get("waiting"), r.get("seconds", {}).get("image"),
            r.get("seconds", {}).get("container"), r.get("seconds", {}).get("total"),
            _iso(a.started), _iso(a.ended), r.get("retry_reason"),
        )])  # fmt: skip
    return rows


def write_tsv(path: str, attempts: List[Attempt]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write("\t".join(TSV_COLUMNS) + "\n")
        for row in tsv_rows(attempts):
            out.write("\t".join(row) + "\n")
