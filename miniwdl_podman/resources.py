"""Resources: host limits, the in-process scheduler, hard limits, OOM messages, GPUs (CDI).

miniwdl calls ``detect_resource_limits`` to cap each task's ``runtime.cpu``/``memory``; the
scheduler then reserves each running task's cpu and memory (and a GPU slot for a
``runtime.gpu`` task) so that the tasks running at once never oversubscribe the host. Limits
come from the host's CPUs and memory, reduced to the CPU affinity, cgroup CPU quota and cgroup
memory limit this process is confined to when those are smaller. The rest is pure: which hard
limits this host's rootless Podman can enforce (from its
:class:`~miniwdl_podman.podman_facts.PodmanFacts`), the message for a
task killed for memory, and which CDI device kinds the host's spec files declare.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import psutil

from .podman_facts import PodmanFacts


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


def _cgroup_cpu_limit() -> Optional[int]:
    """CPUs allowed by this process's cgroup quota (v2 cpu.max or v1 cfs quota), if any."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = [ln.strip().split(":", 2) for ln in f]
    except (OSError, ValueError):
        return None
    for _, controllers, path in lines:
        if controllers == "":
            files = [f"/sys/fs/cgroup{path}/cpu.max"]
        elif "cpu" in controllers.split(","):
            files = [f"/sys/fs/cgroup/cpu{path}/cpu.cfs_quota_us"]
        else:
            continue
        for name in files:
            try:
                with open(name) as f:
                    text = f.read().split()
                if name.endswith("cpu.max") and text and text[0] != "max":
                    return max(1, -(-int(text[0]) // int(text[1])))
                if name.endswith("quota_us") and text and int(text[0]) > 0:
                    with open(name.replace("quota_us", "period_us")) as f:
                        return max(1, -(-int(text[0]) // int(f.read().strip())))
            except (OSError, ValueError, IndexError):
                continue
    return None


def host_limits() -> Dict[str, int]:
    """{"cpu": usable CPUs, "mem_bytes": usable memory} for tasks on this host."""
    try:
        cpu = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpu = os.cpu_count() or 1
    quota = _cgroup_cpu_limit()
    if quota is not None:
        cpu = min(cpu, quota)
    mem = int(psutil.virtual_memory().total)
    limit = _cgroup_memory_limit()
    if limit is not None:
        mem = min(mem, limit)
    return {"cpu": max(1, cpu), "mem_bytes": mem}


class Scheduler:
    """Reserve cpu, memory and a GPU slot for each running task; wait while the host is full.

    ``gpu_slots`` is how many ``runtime.gpu`` tasks may run at once (each is given every
    configured GPU device, so the default of one keeps them from sharing GPUs); 0: no limit.
    """

    def __init__(self, cpu: int, mem_bytes: int, gpu_slots: int = 0) -> None:
        self.cpu = cpu
        self.mem_bytes = mem_bytes
        self.gpu_slots = gpu_slots
        self._used_cpu = 0
        self._used_mem = 0
        self._used_gpu = 0
        self._cv = threading.Condition()

    def reserve(self, cpu: int, mem_bytes: int, gpu: bool = False) -> Reservation:
        """A reservation (a context manager) of the task's share, capped at the whole host."""
        gpu_slot = 1 if gpu and self.gpu_slots else 0
        return Reservation(self, min(cpu, self.cpu), min(mem_bytes, self.mem_bytes), gpu_slot)

    def fits(self, cpu: int, mem_bytes: int, gpu: int, used: Tuple[int, int, int]) -> bool:
        """Whether a reservation fits beside what is ``used`` (cpu, memory, GPU slots). The GPU
        bound applies only to a reservation that takes a slot: slots held elsewhere (another
        run's, perhaps allowed more) never hold back a task that asks for no GPU."""
        return (
            used[0] + cpu <= self.cpu
            and used[1] + mem_bytes <= self.mem_bytes
            and (not gpu or used[2] + gpu <= self.gpu_slots)
        )


class Reservation:
    """A context manager holding one task's reservation; ``waited`` is seconds spent queued."""

    def __init__(self, scheduler: Scheduler, cpu: int, mem_bytes: int, gpu: int = 0) -> None:
        self.scheduler = scheduler
        self.cpu = max(0, cpu)
        self.mem_bytes = max(0, mem_bytes)
        self.gpu = max(0, gpu)
        self.waited = 0.0

    def __enter__(self) -> Reservation:
        s = self.scheduler
        t0 = time.monotonic()
        with s._cv:
            while not s.fits(
                self.cpu, self.mem_bytes, self.gpu, (s._used_cpu, s._used_mem, s._used_gpu)
            ):
                s._cv.wait()
            s._used_cpu += self.cpu
            s._used_mem += self.mem_bytes
            s._used_gpu += self.gpu
        self.waited = time.monotonic() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        s = self.scheduler
        with s._cv:
            s._used_cpu -= self.cpu
            s._used_mem -= self.mem_bytes
            s._used_gpu -= self.gpu
            s._cv.notify_all()


# -- hard limits ---------------------------------------------------------------------------------

CGROUP_V2_DELEGATION_FIX = (
    "delegate the controllers to users: create /etc/systemd/system/user@.service.d/delegate.conf"
    " with `[Service]` and `Delegate=cpu cpuset io memory pids`, run `systemctl daemon-reload`,"
    " and log in again"
)
CGROUP_V1_FIX = (
    "boot the host with cgroup v2 (kernel argument systemd.unified_cgroup_hierarchy=1) and "
    + CGROUP_V2_DELEGATION_FIX
)


@dataclass(frozen=True)
class Enforcement:
    """Which hard limits rootless Podman can set on this host, and if not, why and the fix."""

    cpu: bool
    memory: bool
    why_not: str = ""
    fix: str = ""


def enforcement(facts: PodmanFacts) -> Enforcement:
    """What the service's facts say about cgroups: version and the controllers delegated to us."""
    if not facts.rootless:
        return Enforcement(cpu=True, memory=True)
    if facts.cgroup_version != "v2":
        return Enforcement(
            cpu=False,
            memory=False,
            why_not=f"cgroup {facts.cgroup_version or 'v1'}: rootless Podman cannot set resource"
            " limits",
            fix=CGROUP_V1_FIX,
        )
    cpu, memory = "cpu" in facts.cgroup_controllers, "memory" in facts.cgroup_controllers
    missing = [c for c, ok in (("cpu", cpu), ("memory", memory)) if not ok]
    if not missing:
        return Enforcement(cpu=True, memory=True)
    return Enforcement(
        cpu=cpu,
        memory=memory,
        why_not=f"cgroup v2 without the {' and '.join(missing)} controller delegated to your user",
        fix=CGROUP_V2_DELEGATION_FIX,
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def explain_kill(
    exit_code: int,
    oom_killed: bool,
    memory_reservation: int,
    memory_limit: int,
    memory_enforced: bool,
) -> Optional[str]:
    """A message for a task killed for memory (OOMKilled or exit 137), or None.

    Podman's OOMKilled is unreliable (podman#21749), so exit status 137 (SIGKILL) is explained
    too, with what the task asked for and whether a limit was in force.
    """
    asked = (
        f"runtime.memory {_size(memory_reservation)}" if memory_reservation else "no runtime.memory"
    )
    limited = memory_enforced and memory_limit > 0
    fix = "raise runtime.memory" + (" or [task_runtime] memory_limit_multiplier" if limited else "")
    if oom_killed or (exit_code == 137 and limited):
        where = f"its memory limit of {_size(memory_limit)}" if limited else "the host's memory"
        return (
            f"the task ran out of memory: killed (exit status {exit_code}) at {where}"
            f" ({asked}); {fix}"
        )
    if exit_code == 137:
        return (
            "the task was killed by SIGKILL (exit status 137), most often by the kernel's OOM"
            f" killer when memory runs out ({asked}; no memory limit is enforced on this host);"
            f" {fix}, or run fewer tasks at once"
        )
    return None


# -- GPUs through CDI ------------------------------------------------------------------------------

_CDI_KIND = re.compile(r"""^\s*["']?kind["']?\s*:\s*["']?([A-Za-z0-9._/-]+)""", re.MULTILINE)


def cdi_kinds(spec_dirs: Sequence[str]) -> Dict[str, str]:
    """Device kinds (``vendor/class``) declared by CDI spec files in ``spec_dirs`` → file."""
    ans: Dict[str, str] = {}
    for d in spec_dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            if not name.endswith((".json", ".yaml", ".yml")):
                continue
            path = os.path.join(d, name)
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read(1 << 20)
            except OSError:
                continue
            if name.endswith(".json"):
                try:
                    kinds = [str(json.loads(text).get("kind", ""))]
                except (ValueError, AttributeError):
                    kinds = []
            else:
                kinds = _CDI_KIND.findall(text)
            for kind in kinds:
                if kind:
                    ans.setdefault(kind, path)
    return ans


def missing_cdi_devices(devices: Sequence[str], spec_dirs: Sequence[str]) -> List[str]:
    """The CDI device names (``vendor/class=name``) whose kind no spec file declares."""
    kinds = cdi_kinds(spec_dirs)
    return [d for d in devices if "=" in d and d.split("=", 1)[0] not in kinds]
