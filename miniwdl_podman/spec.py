"""The ContainerSpec: everything Podman is asked for to run one task attempt.

Pure: :func:`resolve` turns a task's :class:`~miniwdl_podman.plan.TaskPlan`, the facts of its
image (:class:`ImageFacts`) and the host's ids into the spec (through the task's identity,
:func:`~miniwdl_podman.identity.decide`), with no Podman call, so it can be unit-tested and is
the same wherever the container runs. It is in neutral terms
(``limits``: ``cpu`` CPUs, ``memory_bytes``); :mod:`miniwdl_podman.libpod` writes it as libpod's
create request.
"""

from __future__ import annotations

import dataclasses
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
        # readable, and sendable whatever bytes the path holds (\xff for a byte not UTF-8)
        LABEL_TASK_DIR: task_dir.encode("utf-8", "surrogateescape").decode(
            "utf-8", "backslashreplace"
        ),
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
    plan: TaskPlan,
    *,
    settings: Settings,
    image: str,
    identity: identity_mod.Identity,
    mounts: Optional[Sequence[Mount]] = None,
    devices: Sequence[str] = (),
) -> ContainerSpec:
    """The ContainerSpec of the plan's task attempt, run as ``identity`` in the local image
    ``image`` (``mounts``: the plan's, unless given)."""
    shell = settings.command_shell
    environment = {str(k): str(v) for k, v in plan.env.items()}
    if identity.home and "HOME" not in environment:
        environment["HOME"] = identity.home
    return ContainerSpec(
        name=container_name(plan.run_id, plan.try_counter),
        image=image,
        # same redirections as miniwdl's other backends: the command script reads nothing from
        # stdin and appends to the mounted stdout.txt/stderr.txt
        command=["/bin/sh", "-c", f"{shell} ../command >> ../stdout.txt 2>> ../stderr.txt"],
        working_dir=os.path.join(plan.container_dir, "work"),
        mounts=list(plan.mounts if mounts is None else mounts),
        identity=identity,
        environment=environment,
        labels=labels(plan.run_id, plan.task_dir),
        network=plan.network,
        init=settings.init,
        privileged=plan.privileged,
        security_opt=list(plan.security_opt),
        limits=dict(plan.limits),
        devices=list(devices),
    )


@dataclass(frozen=True)
class ImageFacts:
    """What a task's container needs to know about its image: its local id, the user it runs
    as (resolved against the image's /etc/passwd when that matters), whether that user's home
    exists in it (None: not looked at), and its digest."""

    id: str
    user: identity_mod.ImageUser
    home_exists: Optional[bool] = None
    digest: str = ""  # the manifest digest, for the record (the container is made from ``id``)


def resolve(
    plan: TaskPlan,
    image: ImageFacts,
    host_ids: identity_mod.HostIds,
    settings: Settings,
    devices: Sequence[str] = (),
    aliases: Optional[Mapping[str, str]] = None,
) -> Tuple[ContainerSpec, identity_mod.Identity]:
    """The plan resolved against its image and the host's ids: (the spec, the task's
    identity). ``aliases``: plain paths for mount sources the API cannot carry
    (:mod:`~miniwdl_podman.staging`). Pure, apart from the container's unique name and
    labels."""
    ident = identity_mod.decide(
        host_ids, plan.image_label, image.user, settings.as_user, image.home_exists
    )
    aliases = aliases or {}
    mounts = [
        dataclasses.replace(m, source=aliases[m.source]) if m.source in aliases else m
        for m in plan.mounts
    ]
    if ident.home_tmpfs:
        mounts.append(Mount("tmpfs", ident.home_tmpfs, read_only=False, kind="tmpfs"))
    spec = build(
        plan, settings=settings, image=image.id, identity=ident, mounts=mounts, devices=devices
    )
    return spec, ident
