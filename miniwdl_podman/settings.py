"""Every ``[podman_rootless]`` option, its default and its validation, in one place.

:func:`load` reads the miniwdl configuration once (from ``global_init``) into a frozen
:class:`Settings`; nothing else in the package reads configuration. Each option can also be set
by the environment variable ``MINIWDL__PODMAN_ROOTLESS__<OPTION>`` (miniwdl's usual rule), and
``contrib/podman_rootless.cfg`` documents them all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

from .errors import ConfigError
from .mounts import SELINUX_MODES

SECTION = "podman_rootless"

SERVICE_MODES = ("auto", "private", "external")
PULL_POLICIES = ("missing", "always", "never")

# option -> (default as written in a config file, one-line description)
DEFAULTS: Dict[str, Tuple[str, str]] = {
    "socket": ("", "Podman API socket URL or path; empty: CONTAINER_HOST, then the user's socket"),
    "service": ("auto", "auto: use the socket if it answers, else start a private service"),
    "podman": ("podman", "podman executable used only to start a private API service"),
    "runtime_dir": ("", "where a private service's socket directory is made"),
    "service_start_timeout": ("30", "seconds to wait for a private service to answer"),
    "api_timeout": ("300", "seconds any single API request (other than wait) may take"),
    "wait_interval": ("20ms", "how often the server checks whether a container has exited"),
    "wait_fast_seconds": ("5", "for how long a task is checked every wait_interval"),
    "wait_interval_long": ("500ms", "how often it is checked after that"),
    "pull": ("missing", "missing: pull only absent images; always; never"),
    "network": ("", "container network mode; empty: Podman's rootless default; none: no network"),
    "init": ("true", "run an init process in the container so signals reach the command"),
    "selinux": ("disable", "disable: no labels, nothing relabelled; shared (z); private (Z); none"),
    "allow_networks": ("[]", "networks a task may ask for with runtime.docker_network"),
    "gpu_devices": ('["nvidia.com/gpu=all"]', "CDI device names given to runtime.gpu tasks"),
    "cdi_spec_dirs": ('["/etc/cdi", "/var/run/cdi"]', "where CDI spec files are looked for"),
    "coordinate": ("true", "share one cpu/memory budget and image pulls with your other runs"),
    "coordination_dir": ("", "per-user dir on local disk for that; empty: /tmp/miniwdl-podman-UID"),
}

_DURATION = re.compile(r"^[0-9]+(\.[0-9]+)?(ns|us|ms|s|m)$")


@dataclass(frozen=True)
class Settings:
    """The backend's configuration, read once per process."""

    socket: str = ""
    service: str = "auto"
    podman: str = "podman"
    runtime_dir: str = ""
    service_start_timeout: float = 30.0
    api_timeout: float = 300.0
    wait_interval: str = "20ms"
    wait_fast_seconds: float = 5.0
    wait_interval_long: str = "500ms"
    pull: str = "missing"
    network: str = ""
    init: bool = True
    selinux: str = "disable"
    allow_networks: Tuple[str, ...] = ()
    gpu_devices: Tuple[str, ...] = ("nvidia.com/gpu=all",)
    cdi_spec_dirs: Tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")
    coordinate: bool = True
    coordination_dir: str = ""
    # miniwdl's own options that the backend needs, read at the same time
    command_shell: str = "/bin/bash"
    as_user: bool = False


def _invalid(name: str, value: str, expected: str) -> ConfigError:
    """The error for an invalid option: its name, value, what is expected, and its env var."""
    return ConfigError(
        f"invalid [{SECTION}] {name} = {value!r}; {expected}"
        f" (env MINIWDL__{SECTION.upper()}__{name.upper()})"
    )


def _choice(name: str, value: str, choices: Tuple[str, ...]) -> str:
    if value not in choices:
        raise _invalid(name, value, f"choose one of {', '.join(choices)}")
    return value


def _number(name: str, value: str) -> float:
    try:
        ans = float(value)
    except ValueError:
        ans = -1.0
    if ans <= 0:
        raise _invalid(name, value, "expected a positive number of seconds")
    return ans


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise _invalid(name, value, "expected true or false")


def _duration(name: str, value: str) -> str:
    if not _DURATION.match(value):
        raise _invalid(name, value, "expected a duration such as 20ms or 1s")
    return value


def _str_list(name: str, value: str) -> Tuple[str, ...]:
    try:
        parsed = json.loads(value) if value else []
    except ValueError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
        raise _invalid(name, value, 'expected a JSON list of strings such as ["a", "b"]')
    return tuple(parsed)


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
        "runtime_dir": get("runtime_dir"),
        "service_start_timeout": _number("service_start_timeout", get("service_start_timeout")),
        "api_timeout": _number("api_timeout", get("api_timeout")),
        "wait_interval": _duration("wait_interval", get("wait_interval")),
        "wait_fast_seconds": _number("wait_fast_seconds", get("wait_fast_seconds")),
        "wait_interval_long": _duration("wait_interval_long", get("wait_interval_long")),
        "pull": _choice("pull", get("pull"), PULL_POLICIES),
        "network": get("network"),
        "init": _bool("init", get("init")),
        "selinux": _choice("selinux", get("selinux"), SELINUX_MODES),
        "allow_networks": _str_list("allow_networks", get("allow_networks")),
        "gpu_devices": _str_list("gpu_devices", get("gpu_devices")),
        "cdi_spec_dirs": _str_list("cdi_spec_dirs", get("cdi_spec_dirs")),
        "coordinate": _bool("coordinate", get("coordinate")),
        "coordination_dir": get("coordination_dir"),
        "command_shell": command_shell,
        "as_user": as_user,
    }
    return Settings(**values)


def load(cfg: Any) -> Settings:
    """Read every option from a miniwdl ``config.Loader`` (config file, env, defaults)."""
    raw = {key: cfg.get(SECTION, key, default) for key, (default, _) in DEFAULTS.items()}
    return from_mapping(
        raw,
        command_shell=cfg.get("task_runtime", "command_shell", "/bin/bash"),
        as_user=cfg.get_bool("task_runtime", "as_user", False),
    )
