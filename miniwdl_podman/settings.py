"""Every ``[podman_rootless]`` option, its default and its validation, in one place.

:func:`load` reads the miniwdl configuration once (from ``global_init``) into a frozen
:class:`Settings`; nothing else in the package reads configuration. Each option can also be set
by the environment variable ``MINIWDL__PODMAN_ROOTLESS__<OPTION>`` (miniwdl's usual rule), and
``contrib/podman_rootless.cfg`` documents them all.
"""

from __future__ import annotations

import configparser
import json
import os
import pwd
import re
import shlex
import socket
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .errors import ConfigError

# [podman_rootless] selinux (what each means: mounts.selinux_options)
SELINUX_MODES = ("disable", "shared", "private", "none")

SECTION = "podman_rootless"

SERVICE_MODES = ("auto", "private", "external")
PULL_POLICIES = ("missing", "always", "never")

# option -> one-line description (its default is the Settings field's, as a config file spells it)
DESCRIPTIONS: Dict[str, str] = {
    "socket": "Podman API socket URL or path; empty: CONTAINER_HOST, then the user's socket",
    "service": "auto: use the socket if it answers, else start a private service",
    "podman": "podman executable used only to start a private API service",
    "service_args": "global podman options for a private service, e.g. --root/--runroot",
    "runtime_dir": "where a private service's socket directory is made",
    "service_start_timeout": "seconds to wait for a private service to answer",
    "service_idle": "seconds a private service stays up idle for your next run (0: stop it"
    " with the run)",
    "api_timeout": "seconds any single API request (other than wait) may take",
    "wait_interval": "how often the server checks whether a container has exited",
    "wait_fast_seconds": "for how long a task is checked every wait_interval",
    "wait_interval_long": "how often it is checked after that",
    "pull": "missing: pull only absent images; always; never",
    "shared_store": "shared read-only image store (a directory on the shared file system);"
    " empty: none",
    "network": "container network mode; empty: Podman's rootless default; none: no network",
    "init": "run an init process in the container so signals reach the command",
    "selinux": "disable: no labels, nothing relabelled; shared (z); private (Z); none",
    "allow_networks": "networks a task may ask for with runtime.docker_network",
    "gpu_devices": "CDI device names given to runtime.gpu tasks",
    "cdi_spec_dirs": "where CDI spec files are looked for",
    "gpu_concurrency": "how many runtime.gpu tasks may run at once on a host; 0: no limit",
    "coordinate": "share one cpu/memory/GPU budget and image pulls with your other runs",
    "coordination_dir": "per-user dir on local disk for that; empty: /tmp/miniwdl-podman-UID",
    "retry_wait": "seconds before a task's first retry, doubling per retry (jittered); 0: none",
    "retry_wait_max": "the longest wait between two attempts of a task, in seconds",
}

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m)$")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def seconds(duration: str) -> float:
    """Seconds in a Go-style duration such as ``20ms`` or ``1.5s`` (as validated here)."""
    m = _DURATION.match(duration)
    if not m:
        raise ValueError(f"not a duration: {duration!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


@dataclass(frozen=True)
class Settings:
    """The backend's configuration, read once per process."""

    socket: str = ""
    service: str = "auto"
    podman: str = "podman"
    service_args: Tuple[str, ...] = ()
    runtime_dir: str = ""
    service_start_timeout: float = 30.0
    service_idle: float = 600.0
    api_timeout: float = 300.0
    wait_interval: str = "10ms"
    wait_fast_seconds: float = 5.0
    wait_interval_long: str = "500ms"
    pull: str = "missing"
    shared_store: str = ""
    network: str = ""
    init: bool = True
    selinux: str = "disable"
    allow_networks: Tuple[str, ...] = ()
    gpu_devices: Tuple[str, ...] = ("nvidia.com/gpu=all",)
    cdi_spec_dirs: Tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")
    gpu_concurrency: int = 1
    coordinate: bool = True
    coordination_dir: str = ""
    retry_wait: float = 1.0
    retry_wait_max: float = 60.0
    # miniwdl's own options that the backend needs, read at the same time
    command_shell: str = "/bin/bash"
    as_user: bool = False


def _text(value: Any, shell: bool = False) -> str:
    """A value as a config file spells it: lists as JSON (or shell words), booleans as
    true/false, numbers without a needless ``.0``."""
    if isinstance(value, tuple):
        return shlex.join(value) if shell else json.dumps(list(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# option -> (default as written in a config file, one-line description)
DEFAULTS: Dict[str, Tuple[str, str]] = {
    key: (_text(getattr(Settings(), key)), text) for key, text in DESCRIPTIONS.items()
}


def _invalid(name: str, value: str, expected: str, section: str = SECTION) -> ConfigError:
    """The error for an invalid option: its name, value, what is expected, and its env var."""
    return ConfigError(
        f"invalid [{section}] {name} = {value!r}; {expected}"
        f" (env MINIWDL__{section.upper()}__{name.upper()})"
    )


def _choice(name: str, value: str, choices: Tuple[str, ...]) -> str:
    if value not in choices:
        raise _invalid(name, value, f"choose one of {', '.join(choices)}")
    return value


def _number(name: str, value: str, section: str = SECTION) -> float:
    try:
        ans = float(value)
    except ValueError:
        ans = -1.0
    if ans <= 0:
        raise _invalid(name, value, "expected a positive number of seconds", section)
    return ans


def _seconds_or_zero(name: str, value: str, section: str = SECTION) -> float:
    try:
        seconds_ = float(value)
    except ValueError:
        seconds_ = -1.0
    if not seconds_ >= 0:
        raise _invalid(name, value, "expected a number of seconds, 0 or more", section)
    return seconds_


# every spelling miniwdl's own Loader.get_bool takes (and on/off), so a value that works in
# [scheduler] works here
_TRUE = ("true", "t", "yes", "y", "1", "on")
_FALSE = ("false", "f", "no", "n", "0", "off")


def _bool(name: str, value: str, section: str = SECTION) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise _invalid(
        name, value, "expected true or false (or yes/no, 1/0, t/f, y/n, on/off)", section
    )


def _count(name: str, value: str, section: str = SECTION) -> int:
    if not (value.isascii() and value.isdigit()):
        raise _invalid(name, value, "expected a whole number >= 0", section)
    return int(value)


def _duration(name: str, value: str) -> str:
    if not _DURATION.match(value):
        raise _invalid(name, value, "expected a duration such as 20ms or 1s")
    return value


def _str_list(name: str, value: str) -> Tuple[str, ...]:
    """A JSON list of strings; as miniwdl's Loader.get_list, a value that does not start with
    ``[`` is a list of that one value (empty: no value)."""
    if value and not value.startswith("["):
        return (value,)
    try:
        parsed = json.loads(value) if value else []
    except ValueError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
        raise _invalid(name, value, 'expected a JSON list of strings such as ["a", "b"]')
    return tuple(parsed)


def _absolute(name: str, value: str) -> str:
    """An absolute directory path (``~`` expanded), or empty."""
    path = os.path.expanduser(value) if value else ""
    if path and not os.path.isabs(path):
        raise _invalid(name, value, "expected an absolute path such as /shared/podman-images")
    return path


def from_mapping(
    raw: Dict[str, str],
    command_shell: str = "/bin/bash",
    as_user: bool = False,
) -> Settings:
    """Validate option strings (as a config file or env var spells them) into Settings."""
    get: Callable[[str], str] = lambda k: raw.get(k, DEFAULTS[k][0]).strip()  # noqa: E731
    values: Dict[str, Any] = {
        "socket": get("socket"),
        "service": _choice("service", get("service"), SERVICE_MODES),
        "podman": get("podman") or "podman",
        "service_args": _str_list("service_args", get("service_args")),
        "runtime_dir": get("runtime_dir"),
        "service_start_timeout": _number("service_start_timeout", get("service_start_timeout")),
        "service_idle": _seconds_or_zero("service_idle", get("service_idle")),
        "api_timeout": _number("api_timeout", get("api_timeout")),
        "wait_interval": _duration("wait_interval", get("wait_interval")),
        "wait_fast_seconds": _number("wait_fast_seconds", get("wait_fast_seconds")),
        "wait_interval_long": _duration("wait_interval_long", get("wait_interval_long")),
        "pull": _choice("pull", get("pull"), PULL_POLICIES),
        "shared_store": _absolute("shared_store", get("shared_store")),
        "network": get("network"),
        "init": _bool("init", get("init")),
        "selinux": _choice("selinux", get("selinux"), SELINUX_MODES),
        "allow_networks": _str_list("allow_networks", get("allow_networks")),
        "gpu_devices": _str_list("gpu_devices", get("gpu_devices")),
        "cdi_spec_dirs": _str_list("cdi_spec_dirs", get("cdi_spec_dirs")),
        "gpu_concurrency": _count("gpu_concurrency", get("gpu_concurrency")),
        "coordinate": _bool("coordinate", get("coordinate")),
        "coordination_dir": get("coordination_dir"),
        "retry_wait": _seconds_or_zero("retry_wait", get("retry_wait")),
        "retry_wait_max": _seconds_or_zero("retry_wait_max", get("retry_wait_max")),
        "command_shell": command_shell,
        "as_user": as_user,
    }
    return Settings(**values)


def _read(cfg: Any, section: str, key: str, default: str) -> str:
    """One option through miniwdl's loader; a value its configparser cannot read (a lone ``%``
    in a config file: interpolation) is a ConfigError naming the fix, not a traceback."""
    try:
        return str(cfg.get(section, key, default))
    except configparser.Error as exn:
        raise ConfigError(
            f"cannot read [{section}] {key} from the miniwdl config file: {exn}; in a config"
            " file write each % as %% (e.g. node_storage = /tmp/mwp-%%u-%%j); an environment"
            f" variable takes it as it is (MINIWDL__{section.upper()}__{key.upper()})"
        ) from None


def load(cfg: Any) -> Settings:
    """Read every option from a miniwdl ``config.Loader`` (config file, env, defaults)."""
    raw = {key: _read(cfg, SECTION, key, default) for key, (default, _) in DEFAULTS.items()}
    return from_mapping(
        raw,
        command_shell=cfg.get("task_runtime", "command_shell", "/bin/bash"),
        as_user=cfg.get_bool("task_runtime", "as_user", False),
    )


# -- [podman_rootless_slurm] ------------------------------------------------------------------

SLURM_SECTION = "podman_rootless_slurm"

SLURM_DESCRIPTIONS: Dict[str, str] = {
    "extra_args": "more sbatch options for every task, e.g. --partition=x --account=y",
    "gpu_gres": "--gres asked for a runtime.gpu task; empty: none",
    "time_minutes": "--time for tasks without runtime.time_minutes; 0: the partition's",
    "node_python": "Python with miniwdl_podman on the compute nodes; empty: this one",
    "node_storage": (
        "node-local dir for Podman's store on compute nodes ($USER expanded there); empty: yours"
    ),
    "node_runtime_dir": "where the node's private service socket goes; empty: as locally",
    "sbatch": "the sbatch command (scancel and scontrol are found beside it)",
    "submit_timeout": "seconds to keep retrying sbatch while Slurm's controller is away",
    "pending_timeout": "seconds a job may stay pending for one reason before its task fails;"
    " 0: as long as Slurm keeps it",
    "pin_digests": "every job of a run gets the image the run's first job got for a tag",
}


@dataclass(frozen=True)
class SlurmSettings:
    """The Slurm backend's own options (the container's are still ``[podman_rootless]``)."""

    extra_args: Tuple[str, ...] = ()
    gpu_gres: str = "gpu:1"
    time_minutes: int = 0
    node_python: str = ""
    node_storage: str = "/tmp/miniwdl-podman-$USER"
    node_runtime_dir: str = ""
    sbatch: str = "sbatch"
    submit_timeout: float = 300.0
    pending_timeout: float = 0.0
    pin_digests: bool = True


SLURM_DEFAULTS: Dict[str, Tuple[str, str]] = {
    key: (_text(getattr(SlurmSettings(), key), shell=key == "extra_args"), text)
    for key, text in SLURM_DESCRIPTIONS.items()
}


def slurm_from_mapping(raw: Dict[str, str]) -> SlurmSettings:
    """Validate ``[podman_rootless_slurm]`` option strings into SlurmSettings."""
    get: Callable[[str], str] = lambda k: raw.get(k, SLURM_DEFAULTS[k][0]).strip()  # noqa: E731
    try:
        extra = tuple(shlex.split(get("extra_args")))
    except ValueError as exn:
        raise _invalid(
            "extra_args", get("extra_args"), f"{exn} (shell quoting)", SLURM_SECTION
        ) from None
    for arg in extra:
        if arg.split("=")[0] in _SLURM_OWNED:
            raise _invalid(
                "extra_args",
                get("extra_args"),
                f"{arg.split('=')[0]} is set by the backend from the task's runtime section",
                SLURM_SECTION,
            )
    minutes = _count("time_minutes", get("time_minutes"), SLURM_SECTION)
    return SlurmSettings(
        extra_args=extra,
        gpu_gres=get("gpu_gres"),
        time_minutes=minutes,
        node_python=get("node_python"),
        node_storage=get("node_storage"),
        node_runtime_dir=get("node_runtime_dir"),
        sbatch=get("sbatch") or "sbatch",
        submit_timeout=_number("submit_timeout", get("submit_timeout"), SLURM_SECTION),
        pending_timeout=_seconds_or_zero("pending_timeout", get("pending_timeout"), SLURM_SECTION),
        pin_digests=_bool("pin_digests", get("pin_digests"), SLURM_SECTION),
    )


# sbatch options the backend computes itself; setting them in extra_args would conflict
_SLURM_OWNED = frozenset(
    ["--wait", "-W", "--parsable", "--requeue", "--no-requeue", "--output", "-o", "--error",
     "-e", "--job-name", "-J", "--ntasks", "-n", "--cpus-per-task", "-c", "--mem", "--chdir",
     "-D", "--comment", "--open-mode"]
)  # fmt: skip


def load_slurm(cfg: Any) -> SlurmSettings:
    """Read every ``[podman_rootless_slurm]`` option from a miniwdl ``config.Loader``."""
    return slurm_from_mapping(
        {
            key: _read(cfg, SLURM_SECTION, key, default)
            for key, (default, _) in SLURM_DEFAULTS.items()
        }
    )


# -- on a compute node ---------------------------------------------------------------------


# the longest --runroot Podman takes ("the specified runroot is longer than 50 characters"):
# the node store's is node_storage + /run
MAX_RUNROOT = 50


def node_path(
    text: str,
    environ: Mapping[str, str],
    user: Optional[str] = None,
    host: Optional[str] = None,
) -> str:
    """A node-side path option (``node_storage``, ``node_runtime_dir``) as the compute node
    means it: Slurm's filename patterns, which miniwdl leaves alone (it expands ``$VAR`` itself,
    on the login node), become the node's values (``%j`` job id, ``%u`` user, ``%N`` node,
    ``%%`` a ``%``); then what ``$VAR`` miniwdl left (unset on the login node) is expanded.
    ``user`` and ``host``: this process's user and short host name unless given."""
    user = user if user is not None else pwd.getpwuid(os.getuid()).pw_name
    host = host if host is not None else socket.gethostname().split(".")[0]
    values = {"j": environ.get("SLURM_JOB_ID", ""), "u": user, "N": host, "%": "%"}
    out, i = [], 0
    while i < len(text):
        if text[i] == "%" and i + 1 < len(text) and text[i + 1] in values:
            out.append(values[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return os.path.expandvars("".join(out))


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
            # inside the job, ended with it: a warm service would outlive the job's cgroup
            "service_idle": 0.0,
            "runtime_dir": runtime_dir,
            "service_args": tuple(args) + tuple(settings.service_args),
        }
    )
