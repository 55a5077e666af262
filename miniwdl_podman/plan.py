"""The task plan: everything decided about a task attempt's container before Podman is asked.

Pure (no I/O, no Podman): built by :func:`task_plan` from the task's runtime values, its paths,
the settings and what the host enforces, in neutral terms (``Mount``, network name, SELinux
options, ``limits`` as ``cpu`` and ``memory_bytes``). The same :class:`TaskPlan` runs locally
or, as JSON, on a Slurm compute node; :mod:`~miniwdl_podman.launch` resolves it against the
image into a ContainerSpec.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from . import mounts
from .mounts import Mount, Staged
from .podman_facts import Enforcement
from .settings import Settings

DEFAULT_IMAGE = "ubuntu:22.04"  # miniwdl's own default for tasks with no runtime.docker


@dataclass(frozen=True)
class TaskPlan:
    """What one task attempt's container needs, decided before its image is resolved."""

    run_id: str
    task_dir: str
    try_counter: int
    container_dir: str
    mounts: List[Mount]
    image: str = ""  # an image name, unless inline_dockerfile is set
    inline_dockerfile: str = ""
    env: Dict[str, str] = field(default_factory=dict)
    privileged: bool = False
    network: str = ""
    security_opt: List[str] = field(default_factory=list)
    limits: Dict[str, int] = field(default_factory=dict)
    gpu: bool = False
    # host paths the task may write, scanned afterwards for files owned by other uids
    writable: List[str] = field(default_factory=list)
    # inputs put in place under their exact names for the run (names the API cannot carry)
    staged: List[Staged] = field(default_factory=list)

    @property
    def image_label(self) -> str:
        """The image as the user wrote it, for messages."""
        return "runtime.inlineDockerfile" if self.inline_dockerfile else self.image

    def to_json(self) -> str:
        """The plan as JSON (what the Slurm backend hands to the compute node)."""
        return json.dumps(asdict(self), indent=1)

    @staticmethod
    def from_json(text: str) -> TaskPlan:
        """The plan back from :meth:`to_json`."""
        raw: Dict[str, Any] = json.loads(text)
        raw["mounts"] = [Mount(**m) for m in raw["mounts"]]
        raw["staged"] = [Staged(**m) for m in raw.get("staged", [])]
        return TaskPlan(**raw)


def task_network(asked: Optional[str], settings: Settings) -> Tuple[str, Optional[str]]:
    """(the task's network, a warning or None): ``runtime.docker_network`` if it is listed in
    ``allow_networks``, else the configured network."""
    if not asked:
        return settings.network, None
    if asked in settings.allow_networks:
        return str(asked), None
    return settings.network, (
        "runtime.docker_network ignored; the network name must appear in the JSON list"
        " [podman_rootless] allow_networks / env MINIWDL__PODMAN_ROOTLESS__ALLOW_NETWORKS"
    )


def hard_limits(enf: Enforcement, cpu: int, memory_limit: int) -> Tuple[Dict[str, int], List[str]]:
    """(the limits to ask for, what was asked for but cannot be enforced here): never a limit
    the host cannot enforce (asking for an undelegated controller makes Podman fail the
    container instead of ignoring it)."""
    limits: Dict[str, int] = {}
    unenforced: List[str] = []
    for what, key, value, ok in (
        ("cpu", "cpu", cpu, enf.cpu),
        ("memory", "memory_bytes", memory_limit, enf.memory),
    ):
        if value > 0 and ok:
            limits[key] = value
        elif value > 0:
            unenforced.append(what)
    return limits, unenforced


def task_plan(
    *,
    run_id: str,
    task_dir: str,
    try_counter: int,
    paths: mounts.TaskPaths,
    input_path_map: Mapping[str, str],
    bind_inputs: bool,
    runtime_values: Mapping[str, Any],
    default_image: str,
    settings: Settings,
    network: str,
    limits: Mapping[str, int],
) -> TaskPlan:
    """The plan of one task attempt: mounts (SELinux relabelling of what the backend owns),
    image or inline Dockerfile, environment, privileges, network and limits."""
    security_opt, relabel = mounts.selinux_options(settings.selinux)
    inline = str(runtime_values.get("inlineDockerfile") or "")
    return TaskPlan(
        run_id=run_id,
        task_dir=task_dir,
        try_counter=try_counter,
        container_dir=paths.container_dir,
        mounts=mounts.task_mounts(paths, input_path_map, bind_inputs, relabel=relabel),
        image="" if inline else str(runtime_values.get("docker") or default_image),
        inline_dockerfile=inline,
        env={str(k): str(v) for k, v in runtime_values.get("env", {}).items()},
        privileged=bool(runtime_values.get("privileged", False)),
        network=network,
        security_opt=security_opt,
        limits=dict(limits),
        gpu=bool(runtime_values.get("gpu", False)),
        writable=[paths.host_work_dir, paths.host_stdout, paths.host_stderr],
        staged=mounts.staged_inputs(paths, input_path_map) if bind_inputs else [],
    )
