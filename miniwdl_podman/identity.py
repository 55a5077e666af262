"""Identity policy: which user namespace and in-container user a task runs with.

Pure functions only. The goal: every file a task leaves on the host is owned by the invoking
user, with no chown container and no sudo, whatever user the image runs as.

- **Image runs as root** (no ``USER``, or ``root``/``0``): the default rootless user namespace,
  in which container root *is* the invoking user on the host. The command keeps the root it
  expects (``apt-get install`` in a task still works), ``$HOME`` is ``/root``, and Podman needs no
  ID-mapped copy of the image.
- **Image runs as a non-root user** (``USER app``, ``USER 1000``, ``USER 1000:100``): keep-id
  with ``uid=U,gid=G`` (the dict form that Podman 4.3 through 5.x accept), so that user *inside*
  is the invoking user *outside*. The command runs as ``U:G`` as the image expects.
- **``[task_runtime] as_user = true``**: plain keep-id: the command runs with the invoking
  user's own uid/gid inside, whatever the image says.
- **Single-uid mode** (the user has no subordinate uid/gid range, e.g. LDAP users on HPC): only
  the invoking user can be mapped, as container root. Root images (and ``as_user``) run so;
  images with a non-root ``USER`` cannot, and fail with the reason and the fix.

Where the in-container user would have no writable ``$HOME`` (Podman 4.3 gives keep-id users
``HOME=/``; ``nobody`` has ``/nonexistent``), the task gets a private tmpfs there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .errors import BackendError

UsernsMode = Union[str, Dict[str, str]]

FALLBACK_HOME = "/home/miniwdl"
SUBUID_FIX = (
    "ask an administrator for a subordinate uid/gid range (`usermod --add-subuids"
    " 100000-165535 --add-subgids 100000-165535 $USER`, then `podman system migrate`)"
)


class IdentityError(BackendError):
    """The task cannot run as the image's user on this host; the message says why and the fix."""


@dataclass(frozen=True)
class HostIds:
    """The invoking user's ids and how many subordinate ids rootless Podman can map."""

    uid: int
    gid: int
    subuids: int
    subgids: int

    @property
    def single_uid(self) -> bool:
        return self.subuids == 0 or self.subgids == 0


def host_ids(info: Mapping[str, Any], uid: int, gid: int) -> HostIds:
    """HostIds from Podman's ``info()`` (host.idMappings): ids mapped beyond container root."""
    mappings = info.get("host", {}).get("idMappings", {}) or {}

    def extra(key: str) -> int:
        return sum(int(m.get("size", 0)) for m in mappings.get(key) or [] if m.get("container_id"))

    return HostIds(uid=uid, gid=gid, subuids=extra("uidmap"), subgids=extra("gidmap"))


@dataclass(frozen=True)
class ImageUser:
    """The user an image runs as, resolved against its own /etc/passwd and /etc/group."""

    spec: str
    uid: int = 0
    gid: int = 0
    home: Optional[str] = None
    resolved: bool = True  # False: only the USER string is known (no /etc/passwd read)

    @property
    def is_root(self) -> bool:
        return self.uid == 0 if self.resolved else runs_as_root(self.spec)


def parse_passwd(text: str) -> List[Tuple[str, int, int, str]]:
    """(name, uid, gid, home) of each well-formed /etc/passwd line."""
    ans = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 6 and parts[2].isdigit() and parts[3].isdigit():
            ans.append((parts[0], int(parts[2]), int(parts[3]), parts[5]))
    return ans


def parse_group(text: str) -> Dict[str, int]:
    """name -> gid of each well-formed /etc/group line."""
    ans = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            ans[parts[0]] = int(parts[2])
    return ans


def runs_as_root(user_spec: str) -> bool:
    """Whether an image ``USER`` value means root (empty, ``root``, ``0``, with any group)."""
    return user_spec.strip().partition(":")[0] in ("", "root", "0")


def resolve_image_user(
    image: str, user_spec: str, passwd: Optional[str], group: Optional[str]
) -> ImageUser:
    """Resolve an image's ``USER`` (``name``, ``uid``, ``name:group``, ``uid:gid``).

    A numeric user with no group takes its passwd entry's group, else the same number (so that
    files it writes get a mapped group). Raises IdentityError for a name the image lacks.
    """
    spec = user_spec.strip()
    user, _, grp = spec.partition(":")
    entries = parse_passwd(passwd or "")
    by_name = {e[0]: e for e in entries}
    by_uid: Dict[int, Tuple[str, int, int, str]] = {}
    for e in entries:
        by_uid.setdefault(e[1], e)
    if user in ("", "root"):
        user = "0"
    if user.isdigit():
        uid = int(user)
        entry = by_uid.get(uid)
    else:
        entry = by_name.get(user)
        if entry is None:
            raise IdentityError(
                f"container image {image} runs as user {user!r} (its USER {spec!r}), which its"
                " /etc/passwd does not define; fix the image, or set [task_runtime] as_user ="
                " true to run the task as yourself"
            )
        uid = entry[1]
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            groups = parse_group(group or "")
            if grp not in groups:
                raise IdentityError(
                    f"container image {image} runs as group {grp!r} (its USER {spec!r}), which"
                    " its /etc/group does not define; fix the image, or set [task_runtime]"
                    " as_user = true to run the task as yourself"
                )
            gid = groups[grp]
    else:
        gid = entry[2] if entry else uid
    return ImageUser(spec=spec, uid=uid, gid=gid, home=entry[3] if entry else None)


@dataclass(frozen=True)
class Identity:
    """The user-namespace mode, in-container user and $HOME to create the container with."""

    userns: UsernsMode
    user: Optional[str] = None
    mode: str = "root"  # root | image-user | as-user (for the log)
    home: Optional[str] = None  # set HOME to this ...
    home_tmpfs: Optional[str] = None  # ... and mount a private tmpfs here
    notes: Tuple[str, ...] = field(default_factory=tuple)


def decide(
    host: HostIds,
    image: str,
    image_user: ImageUser,
    as_user: bool = False,
    home_exists: Optional[bool] = None,
) -> Identity:
    """The Identity for a task: see the module docstring for the policy.

    ``home_exists`` says whether the image user's passwd home exists in the image (None: not
    looked up); a missing or unusable home gets a private tmpfs.
    """
    if host.single_uid:
        if not image_user.is_root and not as_user:
            raise IdentityError(
                f"container image {image} runs as non-root user {image_user.spec!r}, but your"
                " user has no subordinate uid/gid range, so rootless Podman can map only you"
                " (as container root); " + SUBUID_FIX + ", or set [task_runtime] as_user ="
                " true to run the task as container root"
            )
        return Identity(userns="", user="0:0", mode="root")
    if as_user:
        return Identity(
            userns="keep-id",
            user=f"{host.uid}:{host.gid}",
            mode="as-user",
            home=FALLBACK_HOME,
            home_tmpfs=FALLBACK_HOME,
        )
    if image_user.is_root:
        return Identity(userns="", mode="root")
    uid, gid = image_user.uid, image_user.gid
    if gid == 0:
        # keep-id cannot map the image user's group 0 to the invoking user's group (Podman
        # refuses uid/gid 0 in keep-id): run with the user's own number as its group instead
        gid = uid
    home = image_user.home
    home_tmpfs = None
    if not home or home == "/":
        home, home_tmpfs = FALLBACK_HOME, FALLBACK_HOME
    elif home_exists is False:
        home_tmpfs = home
    return Identity(
        userns={"nsmode": "keep-id", "value": f"uid={uid},gid={gid}"},
        user=f"{uid}:{gid}",
        mode="image-user",
        home=home,
        home_tmpfs=home_tmpfs,
    )
