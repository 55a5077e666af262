"""The ContainerSpec: everything Podman is asked for to run one task attempt.

Pure: :func:`resolve` turns a task's :class:`~miniwdl_podman.plan.TaskPlan`, the facts of its
image (:class:`ImageFacts`) and the host's ids into the spec (through the task's identity,
:func:`~miniwdl_podman.identity.decide`), with no Podman call, so it can be unit-tested and is
the same wherever the container runs. It is in neutral terms
(``limits``: ``cpu`` CPUs, ``memory_bytes``); :mod:`miniwdl_podman.libpod` writes it as libpod's
create request.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from . import host
from . import identity as identity_mod
from .mounts import Mount
from .plan import TaskPlan
from .settings import Settings

LABEL_PREFIX = "io.github.miniwdl-podman"
LABEL_RUN = f"{LABEL_PREFIX}.run_id"
LABEL_PID = f"{LABEL_PREFIX}.pid"
LABEL_PID_STARTED = f"{LABEL_PREFIX}.pid_started"
LABEL_HOST = f"{LABEL_PREFIX}.host"
LABEL_TASK_DIR = f"{LABEL_PREFIX}.task_dir"
LABEL_PROBE = f"{LABEL_PREFIX}.probe"


@dataclass(frozen=True)
class ContainerSpec:
    """One container to create: image, command, mounts, identity, limits, labels."""

    name: str
    image: str
    command: List[str]
    working_dir: str
    mounts: Sequence[Mount]
    identity: identity_mod.Identity
    environment: Dict[str, str] = field(default_factory=dict)
    labels: Dict[str, str] = field(default_factory=dict)
    network: str = ""
    init: bool = True
    privileged: bool = False
    security_opt: List[str] = field(default_factory=list)
    limits: Dict[str, int] = field(default_factory=dict)
    devices: List[str] = field(default_factory=list)


def container_name(run_id: str, try_counter: int) -> str:
    """A readable name, unique on the host: run id, attempt, and a random suffix."""
    safe = "".join(c if c.isalnum() or c in "_.-" else "-" for c in run_id)[:40].strip("-.")
    return f"miniwdl-{safe or 'task'}-{try_counter}-{secrets.token_hex(5)}"


def labels(run_id: str, task_dir: str) -> Dict[str, str]:
    """Labels that let a later run or ``doctor`` find containers left by a dead process."""
    return {
        LABEL_RUN: run_id,
        LABEL_PID: str(os.getpid()),
        LABEL_PID_STARTED: host.own_start_time(),
        LABEL_HOST: socket.gethostname(),
        LABEL_TASK_DIR: task_dir,
    }


def probe_spec(image_id: str) -> ContainerSpec:
    """An unstarted container of an image, to read its files (never started: no network, no
    init, no mounts; the rootless default user namespace)."""
    return ContainerSpec(
        name=f"miniwdl-probe-{image_id[:12]}-{os.getpid()}-{threading.get_ident() % 100000}",
        image=image_id,
        command=["true"],
        working_dir="/",
        mounts=[],
        identity=identity_mod.Identity(userns=""),
        labels={**labels("image-probe", ""), LABEL_PROBE: "1"},
        network="none",
        init=False,
    )


def build(
    *,
    settings: Settings,
    run_id: str,
    task_dir: str,
    try_counter: int,
    image: str,
    container_dir: str,
    mounts: Sequence[Mount],
    identity: identity_mod.Identity,
    security_opt: Sequence[str] = (),
    env: Optional[Mapping[str, str]] = None,
    privileged: bool = False,
    network: Optional[str] = None,
    limits: Optional[Mapping[str, int]] = None,
    devices: Sequence[str] = (),
) -> ContainerSpec:
    """Compute the ContainerSpec for one attempt of a task."""
    shell = settings.command_shell
    environment = {str(k): str(v) for k, v in (env or {}).items()}
    if identity.home and "HOME" not in environment:
        environment["HOME"] = identity.home
    return ContainerSpec(
        name=container_name(run_id, try_counter),
        image=image,
        # same redirections as miniwdl's other backends: the command script reads nothing from
        # stdin and appends to the mounted stdout.txt/stderr.txt
        command=["/bin/sh", "-c", f"{shell} ../command >> ../stdout.txt 2>> ../stderr.txt"],
        working_dir=os.path.join(container_dir, "work"),
        mounts=list(mounts),
        identity=identity,
        environment=environment,
        labels=labels(run_id, task_dir),
        network=settings.network if network is None else network,
        init=settings.init,
        privileged=privileged,
        security_opt=list(security_opt),
        limits=dict(limits or {}),
        devices=list(devices),
    )


@dataclass(frozen=True)
class ImageFacts:
    """What a task's container needs to know about its image: its local id, the user it runs
    as (resolved against the image's /etc/passwd when that matters) and whether that user's
    home exists in it (None: not looked at)."""

    id: str
    user: identity_mod.ImageUser
    home_exists: Optional[bool] = None


def resolve(
    plan: TaskPlan,
    image: ImageFacts,
    host_ids: identity_mod.HostIds,
    settings: Settings,
    devices: Sequence[str] = (),
) -> Tuple[ContainerSpec, identity_mod.Identity]:
    """The plan resolved against its image and the host's ids: (the spec, the task's
    identity). Pure, apart from the container's unique name and labels."""
    ident = identity_mod.decide(
        host_ids, plan.image_label, image.user, settings.as_user, image.home_exists
    )
    mounts = list(plan.mounts)
    if ident.home_tmpfs:
        mounts.append(Mount("tmpfs", ident.home_tmpfs, read_only=False, kind="tmpfs"))
    spec = build(
        settings=settings,
        run_id=plan.run_id,
        task_dir=plan.task_dir,
        try_counter=plan.try_counter,
        image=image.id,
        container_dir=plan.container_dir,
        mounts=mounts,
        identity=ident,
        security_opt=plan.security_opt,
        env=plan.env,
        privileged=plan.privileged,
        network=plan.network,
        limits=plan.limits,
        devices=devices,
    )
    return spec, ident
