"""The files between the login node and a compute node: typed, versioned, written atomically.

For each task attempt the Slurm backend writes a job file (``tryN.json``: the
:class:`~miniwdl_podman.plan.TaskPlan`, the settings and where the other files are); the node
helper writes a result file (``tryN.result``), a ``started`` marker and takes the attempt's
claim (``tryN.claim``). Both files carry :data:`FORMAT` and the package version that wrote
them: a file of another format, or with a field this version does not know, is refused with a
message naming both versions (login and compute nodes must run the same release). Errors
cross as a kind from the explicit table :data:`ERROR_KINDS`, never as a class name looked up.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Dict, Optional, Tuple, Type

from WDL import Error
from WDL.runtime.error import Interrupted

from . import __version__, errors
from .host import write_json_atomic
from .identity import IdentityError
from .plan import TaskPlan
from .settings import Settings
from .shared_store import Staged

# 2: error kinds are protocol names ("image-pull", ...), not class names; 3: a result names
# the image the node ran (id and digest); 4: a job names the image staged in the shared store,
# and the run's pin directory
FORMAT = 4
FILES = ("json", "result", "started", "claim", "log")


class ProtocolError(errors.BackendError):
    """A job or result file this version of the package cannot read."""


def _refuse(what: str, path: str, raw: Dict[str, Any], why: str) -> ProtocolError:
    return ProtocolError(
        f"the {what} {path} {why}: it was written by miniwdl_podman"
        f" {raw.get('package', 'older than 0.2')} (format {raw.get('format', '?')}), and this"
        f" node runs miniwdl_podman {__version__} (format {FORMAT}); install the same version"
        " of miniwdl_podman on the login node and the compute nodes ([podman_rootless_slurm]"
        " node_python)"
    )


def _read(what: str, path: str) -> Dict[str, Any]:
    with open(path) as infile:
        raw = json.load(infile)
    if not isinstance(raw, dict):
        raise _refuse(what, path, {}, "is not a JSON object")
    if raw.get("format") != FORMAT:
        raise _refuse(what, path, raw, f"has format {raw.get('format', 'none')}")
    return raw


def _strict(cls: Type[Any], raw: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(raw) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}")
    return raw


def settings_to_json(settings: Settings) -> Dict[str, Any]:
    """Settings as JSON-able data."""
    return asdict(settings)


def settings_from_json(raw: Dict[str, Any]) -> Settings:
    """Settings back from :func:`settings_to_json` (lists back to tuples); an unknown field
    raises ValueError."""
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items()}
    return Settings(**_strict(Settings, values))


# -- the job file -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One task attempt, as the node helper gets it."""

    plan: TaskPlan
    settings: Settings
    storage: str  # node-local store for Podman ("" : the user's own); $VARS expanded on the node
    runtime_dir: str
    result: str
    started: str
    claim: str
    # the plan's image as the login side staged it in the shared store (None: the node gets it)
    staged: Optional[Staged] = None
    # the run's pin directory (pin_digests; "" : each job resolves its tag itself)
    pins: str = ""


def job_files(base: str) -> Dict[str, str]:
    """The paths of one attempt's files by kind (json, result, started, claim, log)."""
    return {k: f"{base}.{k}" for k in FILES}


def write_job(
    base: str,
    plan: TaskPlan,
    settings: Settings,
    storage: str = "",
    runtime_dir: str = "",
    staged: Optional[Staged] = None,
    pins: str = "",
) -> Dict[str, str]:
    """Write the job file that ``node-run`` reads (``BASE.json``) for one task attempt, and
    clear what an earlier job of that attempt left; the paths of the attempt's files."""
    files = job_files(base)
    for stale in ("result", "started", "claim"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(files[stale])
    write_json_atomic(
        files["json"],
        {
            "format": FORMAT,
            "package": __version__,
            "plan": json.loads(plan.to_json()),
            "settings": settings_to_json(settings),
            "storage": storage,
            "runtime_dir": runtime_dir,
            "result": files["result"],
            "started": files["started"],
            "claim": files["claim"],
            "staged": asdict(staged) if staged is not None else None,
            "pins": pins,
        },
    )
    return files


def result_path_of(path: str) -> str:
    """Where a job file, even one this version cannot read, says its result goes ("" : it
    does not say)."""
    try:
        with open(path) as infile:
            raw = json.load(infile)
    except (OSError, ValueError):
        return ""
    return str(raw.get("result") or "") if isinstance(raw, dict) else ""


def read_job(path: str) -> Job:
    """The job file at ``path``; ProtocolError if this version cannot read it."""
    raw = _read("job file", path)
    try:
        known = {f.name for f in fields(Job)} | {"format", "package"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown job field(s) {', '.join(unknown)}")
        return Job(
            plan=TaskPlan.from_json(json.dumps(_strict(TaskPlan, raw["plan"]))),
            settings=settings_from_json(raw["settings"]),
            storage=str(raw.get("storage", "")),
            runtime_dir=str(raw.get("runtime_dir", "")),
            result=str(raw["result"]),
            started=str(raw["started"]),
            claim=str(raw["claim"]),
            staged=Staged(**_strict(Staged, raw["staged"])) if raw.get("staged") else None,
            pins=str(raw.get("pins") or ""),
        )
    except (KeyError, TypeError, ValueError) as exn:
        raise _refuse("job file", path, raw, f"cannot be read ({exn})") from None


# -- the result file ----------------------------------------------------------------------------

# every error kind that may cross from a compute node (a name of the protocol, not a class
# name), and how the login side raises it again (image: the plan's image, for download errors)
ERROR_KINDS: Dict[str, Callable[[str, str], Exception]] = {
    "interrupted": lambda message, _image: Interrupted(message),
    "image-pull": lambda message, image: errors.ImagePullFailed(image, message),
    "input": lambda message, _image: Error.InputError(message),
    "identity": lambda message, _image: IdentityError(message),
    "protocol": lambda message, _image: ProtocolError(message),
    "config": lambda message, _image: errors.ConfigError(message),
    "podman-unavailable": lambda message, _image: errors.PodmanUnavailable(message),
    "container": lambda message, _image: errors.ContainerFailed(message),
    "backend": lambda message, _image: errors.BackendError(message),
}
# a failure that is none of the above (a bug of the helper): comes back as "backend", with the
# exception's type in the message
UNEXPECTED = "unexpected"
# the order in which an exception is matched to a kind (most specific first)
_KIND_CLASSES: Tuple[Tuple[str, Type[BaseException]], ...] = (
    ("interrupted", Interrupted),
    ("image-pull", errors.ImagePullFailed),
    ("input", Error.InputError),
    ("identity", IdentityError),
    ("protocol", ProtocolError),
    ("config", errors.ConfigError),
    ("podman-unavailable", errors.PodmanUnavailable),
    ("container", errors.ContainerFailed),
    ("backend", errors.BackendError),
)


def error_kind(exn: BaseException) -> str:
    """The kind under which ``exn`` crosses to the login node ("" : not one of ours)."""
    for kind, cls in _KIND_CLASSES:
        if isinstance(exn, cls):
            return kind
    return ""


@dataclass(frozen=True)
class Result:
    """How the node helper ended one task attempt."""

    node: str
    exit_code: Optional[int] = None  # None: no exit status (an error, or terminated)
    oom_killed: bool = False
    peak_rss: int = 0
    cpu_seconds: float = 0.0
    samples: int = 0
    terminated: bool = False
    error: str = ""  # a kind of ERROR_KINDS, or UNEXPECTED
    message: str = ""
    image_id: str = ""  # the image the container ran (empty: none ran)
    image_digest: str = ""
    image_seconds: float = 0.0  # getting it on the node (pull, build, probe)

    def write(self, path: str) -> None:
        write_json_atomic(path, {"format": FORMAT, "package": __version__, **asdict(self)})

    def exception(self, where: str, image: str) -> Exception:
        """The node's error as the same kind of error here (``where``: node and job)."""
        message = f"{self.message} ({where})"
        make = ERROR_KINDS.get(self.error)
        if make is None:  # an exception that is not one of ours: a bug, reported as such
            return errors.BackendError(f"the node helper failed unexpectedly: {message}")
        return make(message, image)


def read_result(path: str) -> Optional[Result]:
    """The result file at ``path``, None if there is none (yet); ProtocolError if this
    version cannot read it."""
    try:
        raw = _read("result file", path)
    except (OSError, ValueError):
        return None
    try:
        values = {k: v for k, v in raw.items() if k not in ("format", "package")}
        return Result(**_strict(Result, values))
    except (TypeError, ValueError) as exn:
        raise _refuse("result file", path, raw, f"cannot be read ({exn})") from None


# -- the claim ------------------------------------------------------------------------------------


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
