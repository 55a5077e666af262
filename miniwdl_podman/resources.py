"""Host resources and the in-process scheduler that keeps tasks within them.

miniwdl calls ``detect_resource_limits`` to cap each task's ``runtime.cpu``/``memory``; the
scheduler then reserves each running task's cpu and memory so that the tasks running at once
never oversubscribe the host. Limits come from the host's CPUs and memory, reduced to the
CPU affinity and cgroup memory limit this process is confined to when those are smaller.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Dict, Optional

import psutil


def _cgroup_memory_limit() -> Optional[int]:
    """The memory limit of this process's cgroup (v2 or v1), if any."""
    candidates = []
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.strip().split(":", 2)
                if controllers == "":
                    candidates.append(f"/sys/fs/cgroup{path}/memory.max")
                elif "memory" in controllers.split(","):
                    candidates.append(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
    except (OSError, ValueError):
        return None
    for candidate in candidates:
        try:
            with open(candidate) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (1 << 60):
            return int(text)
    return None


def host_limits() -> Dict[str, int]:
    """{"cpu": usable CPUs, "mem_bytes": usable memory} for tasks on this host."""
    try:
        cpu = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpu = os.cpu_count() or 1
    mem = int(psutil.virtual_memory().total)
    limit = _cgroup_memory_limit()
    if limit is not None:
        mem = min(mem, limit)
    return {"cpu": max(1, cpu), "mem_bytes": mem}


class Scheduler:
    """Reserve cpu and memory for each running task; wait while the host is full."""

    def __init__(self, cpu: int, mem_bytes: int) -> None:
        self.cpu = cpu
        self.mem_bytes = mem_bytes
        self._used_cpu = 0
        self._used_mem = 0
        self._cv = threading.Condition()

    def reserve(self, cpu: int, mem_bytes: int) -> Reservation:
        return Reservation(self, min(cpu, self.cpu), min(mem_bytes, self.mem_bytes))


class Reservation:
    """A context manager holding one task's reservation; ``waited`` is seconds spent queued."""

    def __init__(self, scheduler: Scheduler, cpu: int, mem_bytes: int) -> None:
        self.scheduler = scheduler
        self.cpu = max(0, cpu)
        self.mem_bytes = max(0, mem_bytes)
        self.waited = 0.0

    def __enter__(self) -> Reservation:
        s = self.scheduler
        t0 = time.monotonic()
        with s._cv:
            while s._used_cpu + self.cpu > s.cpu or s._used_mem + self.mem_bytes > s.mem_bytes:
                s._cv.wait()
            s._used_cpu += self.cpu
            s._used_mem += self.mem_bytes
        self.waited = time.monotonic() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        s = self.scheduler
        with s._cv:
            s._used_cpu -= self.cpu
            s._used_mem -= self.mem_bytes
            s._cv.notify_all()
