"""What a task's end means: how its container ended and what it used, and the one explainer
of a container killed for memory (pure).

Podman's ``OOMKilled`` is unreliable (podman#21749) and a Slurm job may end ``OUT_OF_MEMORY``
with or without the container's exit, so a kill is explained from the exit status, the OOM flag
and a :class:`MemoryContext`: what the task asked for and what bounded its memory (an enforced
Podman limit, the host's memory, or its Slurm job's ``--mem``). Both backends and Slurm's job
states use this one explainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class Exit:
    """How a task's container ended."""

    code: int
    oom_killed: bool = False


@dataclass(frozen=True)
class Outcome:
    """How a task's container ended, and what it used."""

    exit: Exit
    peak_rss: int = 0
    cpu_seconds: float = 0.0
    samples: int = 0

    def usage_fields(self) -> Dict[str, Any]:
        """Log fields for the usage report (empty when nothing was sampled)."""
        if not self.samples:
            return {}
        return {
            "peak_rss_mib": round(self.peak_rss / 2**20, 1),
            "cpu_seconds": round(self.cpu_seconds, 2),
            "samples": self.samples,
        }


def size(n: int) -> str:
    """``1073741824`` → ``"1.0 GiB"``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class MemoryContext:
    """What bounded a task's memory: its ``runtime.memory`` reservation (bytes), and either the
    Podman limit in force (``limit``, when ``enforced``) or the Slurm job that held it."""

    asked: int
    limit: int = 0
    enforced: bool = False
    slurm_job: str = ""

    @property
    def limited(self) -> bool:
        """Whether something smaller than the host bounded the task's memory."""
        return bool(self.slurm_job) or (self.enforced and self.limit > 0)

    def asked_text(self) -> str:
        if self.slurm_job:
            if self.asked:
                return f"--mem {self.asked / 2**20:.0f} MiB, from runtime.memory"
            return "the partition's default memory, as the task sets no runtime.memory"
        return f"runtime.memory {size(self.asked)}" if self.asked else "no runtime.memory"

    def bound_text(self) -> str:
        if self.slurm_job:
            return f"the memory of its Slurm job {self.slurm_job}"
        if self.limited:
            return f"its memory limit of {size(self.limit)}"
        return "the host's memory"

    def fix(self) -> str:
        local_limit = self.limited and not self.slurm_job
        return "raise runtime.memory" + (
            " or [task_runtime] memory_limit_multiplier" if local_limit else ""
        )


def explain_kill(exit_code: int, oom_killed: bool, memory: MemoryContext) -> Optional[str]:
    """A message for a task killed for memory (OOMKilled, or exit 137 = SIGKILL), or None.

    With an enforced local limit, exit 137 is the limit's doing; under Slurm it most likely is
    (the job's memory); with no limit at all it most often is the kernel's OOM killer.
    """
    asked, fix = memory.asked_text(), memory.fix()
    local_limit = memory.limited and not memory.slurm_job
    if oom_killed or (exit_code == 137 and local_limit):
        return (
            f"the task ran out of memory: killed (exit status {exit_code}) at"
            f" {memory.bound_text()} ({asked}); {fix}"
        )
    if exit_code != 137:
        return None
    if memory.slurm_job:
        return (
            "the task was killed by SIGKILL (exit status 137), most likely for exceeding"
            f" {memory.bound_text()} ({asked}); {fix}"
        )
    return (
        "the task was killed by SIGKILL (exit status 137), most often by the kernel's OOM"
        f" killer when memory runs out ({asked}; no memory limit is enforced on this host);"
        f" {fix}, or run fewer tasks at once"
    )


def job_out_of_memory(memory: MemoryContext, where: str) -> str:
    """For a Slurm job ended ``OUT_OF_MEMORY`` before its container's exit was known."""
    return f"{where} was killed for exceeding its memory ({memory.asked_text()}); {memory.fix()}"
