"""Per-task resource usage (peak memory, CPU time), read from the host's /proc.

Rootless Podman reports container statistics only on cgroup v2 with delegated controllers
(``podman stats`` refuses on cgroup v1), and has no peak memory even there; its cgroup is gone
once the container exits. So the backend samples the container's process tree in the host's
/proc while the task runs, which works on cgroup v1 and v2 and for every identity
(``/proc/PID/stat`` and ``status`` are world-readable):

* **peak memory**: the largest peak resident set of any one process of the task (each
  process's ``VmHWM``), which is what GNU ``time`` reports as "Maximum resident set size";
* **CPU time**: user + system time of the live processes plus what each has collected from
  the children it waited for (``cutime``/``cstime``), so work done by short-lived children is
  counted once they are reaped.

Sampled once per poll period: the last period before exit, and processes that live less than
a period, may be missed, and a task that ends within one period has no report. Pure parsing is
separate from the /proc walk so that it is unit-tested.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcSample:
    """One process at one moment: parent, CPU ticks (own and reaped children's), peak RSS."""

    pid: int
    ppid: int
    cpu_ticks: int
    peak_rss: int
    start_ticks: int = 0


def parse_stat(text: str) -> Tuple[int, int, int]:
    """``(ppid, utime + stime + cutime + cstime, starttime)`` from a ``/proc/PID/stat`` line."""
    # the command name is in parentheses and may itself contain spaces or parentheses
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); ppid is field 4; utime..cstime are fields 14..17; starttime 22
    return int(rest[1]), sum(int(rest[i]) for i in range(11, 15)), int(rest[19])


def parse_hwm(text: str) -> int:
    """Peak resident set size in bytes (``VmHWM``) from ``/proc/PID/status``; 0 if absent
    (kernel threads, zombies)."""
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            fields = line.split()
            return int(fields[1]) * 1024 if len(fields) >= 2 else 0
    return 0


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as infile:
            return infile.read()
    except OSError:  # gone, or hidden (hidepid)
        return None


def _children(pid: int) -> List[int]:
    ans: List[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return ans
    for tid in tids:
        text = _read(f"/proc/{pid}/task/{tid}/children")
        if text:
            ans.extend(int(c) for c in text.split())
    return ans


def sample_tree(root: int) -> List[ProcSample]:
    """Every live process in the tree under ``root`` (included), read from /proc."""
    ans: List[ProcSample] = []
    todo, seen = [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stat, status = _read(f"/proc/{pid}/stat"), _read(f"/proc/{pid}/status")
        if stat is None:
            continue
        ppid, ticks, start = parse_stat(stat)
        ans.append(ProcSample(pid, ppid, ticks, parse_hwm(status or ""), start))
        todo.extend(_children(pid))
    return ans


class UsageTracker:
    """Accumulates samples of one task's process tree."""

    def __init__(self) -> None:
        self._ticks = 0
        self._peak: Dict[int, int] = {}
        self._root: Optional[Tuple[int, int]] = None
        self.samples = 0

    def add(self, procs: Iterable[ProcSample]) -> None:
        """Record one sample of the tree (the root first, as :func:`sample_tree` lists it).
        An empty sample (taken after exit), or one whose root is not the process first seen
        (its pid reused after exit), is ignored."""
        procs = list(procs)
        if not procs:
            return
        root = (procs[0].pid, procs[0].start_ticks)
        if self._root is None:
            self._root = root
        elif root != self._root:
            return
        # the live processes' own and reaped children's time: an exited process's time has
        # moved into its parent's (the container's init reaps every orphan), so the sum never
        # counts a process twice, and only grows
        self._ticks = max(self._ticks, sum(p.cpu_ticks for p in procs))
        for p in procs:
            self._peak[p.pid] = max(self._peak.get(p.pid, 0), p.peak_rss)
        self.samples += 1

    @property
    def cpu_seconds(self) -> float:
        """CPU time (user + system) seen so far."""
        return self._ticks / _CLK_TCK

    @property
    def peak_rss(self) -> int:
        """The largest peak resident set of any one process seen so far, in bytes."""
        return max(self._peak.values(), default=0)
