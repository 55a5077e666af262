"""Reservations: the scheduler of one process, and its coordination with the user's other runs.

:class:`Scheduler` reserves each running task's cpu and memory (and a GPU slot for a
``runtime.gpu`` task) so that the tasks running at once never oversubscribe the capacity
(:mod:`~miniwdl_podman.capacity`) it was given.

Two ``miniwdl run``s of the same user on a login node would each assume the whole node; with
``[podman_rootless] coordinate = true`` (the default) they share one budget of CPUs, memory
and GPU slots (``gpu_concurrency``) through a ledger file, locked with ``flock``, in a per-user
directory on local disk (``/tmp/miniwdl-podman-<uid>`` unless ``[podman_rootless]
coordination_dir`` says otherwise). Each running task holds an entry (pid, cpu, memory, GPU
slot); entries of dead processes are dropped, so a killed run frees its share. The same
directory holds per-image lock files so that concurrent processes pull an image once between
them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .errors import ConfigError
from .host import locked, own_start_time, pid_alive
from .settings import SECTION


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


LEDGER = "budget.json"


def ensure_private_dir(path: str) -> str:
    """Create ``path`` 0700 if needed and check it is the user's own; return it."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as exn:
        raise ConfigError(
            f"cannot use {path} for coordination between miniwdl runs: {exn.strerror}; set"
            f" [{SECTION}] coordination_dir to a directory of yours on local disk, or coordinate"
            " = false"
        ) from None
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise ConfigError(
            f"{path} must be a directory owned by you with mode 0700 (chmod 700 {path}), or set"
            f" [{SECTION}] coordination_dir elsewhere"
        )
    return path


def live_entries(entries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Ledger entries whose process still runs."""
    return [
        e
        for e in entries
        if isinstance(e.get("pid"), int) and pid_alive(e["pid"], str(e.get("started") or ""))
    ]


def scheduler(
    cpu: int, mem_bytes: int, gpu_slots: int, coordination_dir: Optional[str]
) -> Scheduler:
    """The run's scheduler: shared with the user's other runs through the ledger in
    ``coordination_dir``, or this process's alone when there is none (``coordinate = false``)."""
    if coordination_dir:
        return SharedScheduler(cpu, mem_bytes, coordination_dir, gpu_slots)
    return Scheduler(cpu, mem_bytes, gpu_slots)


class SharedScheduler(Scheduler):
    """A Scheduler whose budget is shared with this user's other miniwdl processes."""

    def __init__(
        self, cpu: int, mem_bytes: int, directory: str, gpu_slots: int = 0, poll: float = 0.2
    ) -> None:
        super().__init__(cpu, mem_bytes, gpu_slots)
        self.directory = directory
        self.ledger = os.path.join(directory, LEDGER)
        self.poll = poll

    def _read(self) -> List[Dict[str, Any]]:
        try:
            with open(self.ledger) as f:
                entries = json.load(f)
        except (OSError, ValueError):
            return []
        return live_entries(entries if isinstance(entries, list) else [])

    def _write(self, entries: List[Dict[str, Any]]) -> None:
        tmp = f"{self.ledger}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w") as f:
            json.dump(entries, f)
        os.replace(tmp, self.ledger)

    def try_take(self, entry: Dict[str, Any]) -> bool:
        """Add ``entry`` to the ledger if it fits in the budget beside the live entries."""
        with locked(self.ledger + ".lock"):
            entries = self._read()
            cpu, mem, gpu = (sum(int(e.get(k, 0)) for e in entries) for k in ("cpu", "mem", "gpu"))
            fits = self.fits(entry["cpu"], entry["mem"], entry["gpu"], (cpu, mem, gpu))
            if not fits and entries:  # (alone, a task always fits: reservations are capped)
                return False
            self._write([*entries, entry])
            return True

    def give_back(self, entry_id: str) -> None:
        with locked(self.ledger + ".lock"):
            self._write([e for e in self._read() if e.get("id") != entry_id])

    def reserve(self, cpu: int, mem_bytes: int, gpu: bool = False) -> Reservation:
        mine = super().reserve(cpu, mem_bytes, gpu)
        return SharedReservation(self, mine.cpu, mine.mem_bytes, mine.gpu)


class SharedReservation(Reservation):
    """A reservation recorded in the shared ledger for as long as the task runs."""

    scheduler: SharedScheduler

    def __enter__(self) -> SharedReservation:
        s = self.scheduler
        entry = {
            "id": uuid.uuid4().hex,
            "pid": os.getpid(),
            "started": own_start_time(),
            "cpu": self.cpu,
            "mem": self.mem_bytes,
            "gpu": self.gpu,
        }
        t0 = time.monotonic()
        while not s.try_take(entry):
            with s._cv:
                s._cv.wait(s.poll)
        self.entry_id = str(entry["id"])
        self.waited = time.monotonic() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        s = self.scheduler
        s.give_back(self.entry_id)
        with s._cv:
            s._cv.notify_all()


@contextlib.contextmanager
def image_lock(directory: str, image: str) -> Iterator[None]:
    """Serialise the pulls of one image across this user's processes on the node."""
    digest = hashlib.sha256(image.encode()).hexdigest()[:32]
    with locked(os.path.join(directory, f"pull-{digest}.lock")):
        yield
