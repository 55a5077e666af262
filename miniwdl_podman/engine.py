"""The only module that talks to Podman (through podman-py).

One :class:`Engine` per miniwdl process holds one shared podman-py client (thread-safe, with a
connection pool sized to the task concurrency) to the user's API socket or to a private service
it started. It resolves each image once per process (concurrent tasks wait on the same pull),
and runs a :class:`~miniwdl_podman.spec.ContainerSpec`: create, start, wait (server poll
interval ``[podman_rootless] wait_interval``), remove; kill then remove when miniwdl is
terminating. Every podman-py / requests exception is translated here into the types in
:mod:`miniwdl_podman.errors`, with the detail logged and the fix in the message.

podman-py's high-level ``containers.create`` re-inspects each new container and drops the
create response's ``Warnings``, and ``images.pull`` swallows pull errors (podman-py#301); so the
few hot or lossy calls go through podman-py's ``APIClient`` to libpod's documented REST
endpoints, with the create body written by :mod:`miniwdl_podman.libpod`. What differs between
Podman versions is read from :class:`~miniwdl_podman.podman_facts.PodmanFacts` (``facts``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional

import requests
from podman import PodmanClient
from podman.errors import APIError, BuildError, NotFound
from podman.errors import PodmanError as PodmanException
from WDL._util import StructuredLogMessage as _
from WDL.runtime.error import Terminated

from . import host as host_mod
from . import images as images_mod
from . import libpod, podman_facts
from . import service as service_mod
from ._logging import notice
from ._once import Once
from .errors import (
    GENERIC_HINT,
    ContainerFailed,
    ImagePullFailed,
    Interrupted,
    PodmanUnavailable,
    hint_for,
)
from .identity import Identity
from .settings import SECTION, Settings, seconds
from .spec import LABEL_HOST, LABEL_PID, LABEL_PROBE, ContainerSpec
from .spec import labels as spec_labels

# (connect, read) timeout for requests that legitimately block for as long as the task runs
_UNBOUNDED = (30.0, None)
_BUILD_TIMEOUT = 24 * 3600.0
# at most this many container state checks a second, all of this process's fast waits together
_POLLS_PER_SECOND = 200
INLINE_REPO = "localhost/miniwdl-inline"


def _explain(exn: BaseException) -> str:
    """The most useful one-line text of a podman-py/requests exception."""
    if isinstance(exn, APIError):
        text = str(exn.explanation or "") or str(exn)
        cause = exn.__cause__ or exn.__context__
        if cause is not None and not exn.explanation:
            text = f"{text}: {cause}"
        elif cause is not None and "operation failed" in text:
            text = f"{text}: {type(cause).__name__}"
        return text.strip()
    return f"{type(exn).__name__}: {exn}"


def _is_connection_error(exn: BaseException) -> bool:
    """An APIError raised because the service could not be reached (not an HTTP status)."""
    return isinstance(exn, APIError) and exn.response is None


# server errors that say nothing about the request and go away when it is sent again
_TRANSIENT = (
    "keep-id requires additional",
    "database is locked",
    "resource temporarily unavailable",
)
_CREATE_TRIES = 5


def _is_transient(exn: APIError) -> bool:
    return (
        exn.response is not None
        and exn.is_server_error()
        and any(marker in _explain(exn) for marker in _TRANSIENT)
    )


class ImageProbe:
    """Read-only questions about an image's file system, answered from an unstarted container."""

    def __init__(self, client: PodmanClient, cid: str) -> None:
        self.client = client
        self.cid = cid

    def read(self, path: str, limit: int = 1 << 20) -> Optional[str]:
        """The text of a regular file in the image (None if absent or not a file)."""
        try:
            resp = self.client.api.get(f"/containers/{self.cid}/archive", params={"path": path})
            resp.raise_for_status()
        except APIError:
            return None
        with tarfile.open(fileobj=io.BytesIO(resp.content[: limit + 65536])) as tar:
            for member in tar:
                if member.isfile():
                    f = tar.extractfile(member)
                    if f is not None:
                        return f.read(limit).decode("utf-8", errors="replace")
        return None

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists in the image."""
        try:
            resp = self.client.api.head(f"/containers/{self.cid}/archive", params={"path": path})
        except APIError:
            return False
        return bool(resp.status_code == 200)


def _build_log_lines(log: Any) -> List[str]:
    """Text lines of a podman-py build log (an iterator of JSON lines or bytes)."""
    ans: List[str] = []
    for raw in log or []:
        try:
            obj = json.loads(raw)
            text = str(obj.get("stream") or obj.get("error") or "")
        except (ValueError, AttributeError, TypeError):
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        ans.extend(ln.rstrip() for ln in text.splitlines() if ln.strip())
    return ans


def _left_by_dead_process(pid_label: str) -> bool:
    """Whether a container's pid label names a process that no longer exists here."""
    return pid_label.isdigit() and not host_mod.pid_alive(int(pid_label))


def ping(url: str, timeout: float = 3.0) -> bool:
    """Whether a Podman API service answers at ``url``."""
    try:
        with PodmanClient(base_url=url, timeout=timeout) as client:
            return bool(client.ping())
    except Exception:
        return False


@dataclass(frozen=True)
class ImageRef:
    """An image in the local store: its id and the user its config runs as."""

    id: str
    user: str = ""


@dataclass(frozen=True)
class Exit:
    """How a task's container ended."""

    code: int
    oom_killed: bool = False


class Engine:
    """A connection to one Podman API service, shared by all of a process's tasks."""

    def __init__(
        self,
        settings: Settings,
        pool_size: int = 32,
        image_lock: Callable[[str], ContextManager[object]] = lambda _: contextlib.nullcontext(),
    ) -> None:
        self.settings = settings
        # held around a pull: the caller's cross-process lock (one pull of an image per user)
        self.image_lock = image_lock
        self.pool_size = max(16, pool_size)
        self.url = ""
        self.source = ""
        self.version: Dict[str, Any] = {}
        self.info: Dict[str, Any] = {}
        self.facts = podman_facts.PodmanFacts()
        self._private: Optional[service_mod.PrivateService] = None
        self._client: Optional[PodmanClient] = None
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._recover_lock = threading.Lock()
        self._images: Once[ImageRef] = Once()
        self._live: Dict[str, str] = {}  # container id -> name, for cleanup at exit
        self._waiting = 0  # waits in flight
        self._remover = ThreadPoolExecutor(max_workers=4, thread_name_prefix="podman-remove")

    # -- connection ---------------------------------------------------------------------------

    def connect(self, logger: logging.Logger) -> None:
        """Find the user's API socket or start a private service; log which and the version."""
        s = self.settings
        url, source = service_mod.candidate(s, os.environ)
        if s.service != "private" and url and ping(url):
            self.url, self.source = url, source
        elif s.service == "external":
            raise PodmanUnavailable(
                (
                    f"no Podman API service answers at {url} (from {source})"
                    if url
                    else f"[{SECTION}] service = external, but {source}"
                )
                + "; start one (`systemctl --user enable --now podman.socket`, or"
                f" `podman system service --time=0 {url or 'unix:///PATH/podman.sock'} &`),"
                f" or set [{SECTION}] service = auto to let the backend start a private one"
            )
        else:
            if url and s.service == "auto":
                logger.info(_("podman socket not answering; starting a private service", url=url))
            unusable = service_mod.unusable_runtime_dir(os.environ)
            if unusable is not None:
                logger.warning(
                    _(
                        "XDG_RUNTIME_DIR is not a directory you can write (a login node's, in a"
                        " batch job? another user's, after su?); Podman runs without it",
                        XDG_RUNTIME_DIR=unusable,
                    )
                )
            base = service_mod.runtime_base(s, os.environ)
            self._private = service_mod.PrivateService(s.podman, base, s.service_args)
            self._private.start(ping, s.service_start_timeout)
            self.url, self.source = self._private.url, "private service"
        self._client = PodmanClient(
            base_url=self.url, timeout=s.api_timeout, max_pool_size=self.pool_size
        )
        try:
            self.version = self._client.version()
            self.info = self._client.info()
        except APIError as exn:
            self.close()
            raise PodmanUnavailable(
                f"Podman API service at {self.url} answered ping but not version/info:"
                f" {_explain(exn)}; check `podman info` as this user"
            ) from None
        facts = self.facts = podman_facts.from_service(self.version, self.info)
        notice(
            logger,
            _(
                "podman service",
                url=self.url,
                source=self.source,
                version=facts.version_text or "?",
                api_version=facts.api_version or "?",
                rootless=facts.rootless,
                runtime=facts.runtime,
                cgroups=facts.cgroup_version,
                controllers=sorted(facts.cgroup_controllers),
                network=facts.rootless_network,
                storage_driver=facts.storage_driver,
            ),
        )
        if facts.unsupported_reason:
            self.close()
            raise PodmanUnavailable(facts.unsupported_reason)
        for what, where in (("graphRoot", facts.graph_root), ("runRoot", facts.run_root)):
            kind = host_mod.fs_type(where) if where else "unknown"
            if host_mod.is_network_fs(kind):
                logger.warning(
                    _(
                        f"podman storage ({what}) is on a network file system ({kind}), where"
                        " rootless container storage breaks or crawls; run `miniwdl-podman"
                        " doctor --fix` to move it to node-local disk",
                        path=where,
                    )
                )
        if facts.storage_driver == "vfs":
            logger.warning(
                _(
                    "podman storage driver is vfs: every container copies its whole image;"
                    ' set driver = "overlay" in ~/.config/containers/storage.conf'
                    " (then `podman system reset`) where the kernel allows",
                    graph_root=facts.graph_root,
                )
            )

    @property
    def graph_root(self) -> str:
        return self.facts.graph_root

    @property
    def client(self) -> PodmanClient:
        if self._client is None:
            raise PodmanUnavailable("internal: Podman engine used before connect()")
        return self._client

    def _recover(self, logger: logging.Logger) -> bool:
        """After a connection error: is the service back? Restart our private service if it
        died; wait (up to service_start_timeout) for an external one to come back."""
        with self._recover_lock:
            if ping(self.url):
                return True
            if self._private is not None:
                if not self._private.alive():
                    logger.warning(_("private podman service died; restarting it", url=self.url))
                    try:
                        self._private.restart(ping, self.settings.service_start_timeout)
                    except PodmanUnavailable as exn:
                        logger.error(_("private podman service restart failed", error=str(exn)))
                        return False
                return ping(self.url)
            logger.warning(
                _("podman service not answering; waiting for it to come back", url=self.url)
            )
            deadline = time.monotonic() + self.settings.service_start_timeout
            while time.monotonic() < deadline:
                if ping(self.url):
                    logger.warning(_("podman service is back", url=self.url))
                    return True
                time.sleep(0.5)
            return False

    def _request(
        self, method: str, path: str, logger: logging.Logger, retries: int = 4, **kwargs: Any
    ) -> Any:
        """An idempotent API request, retried after connection errors (once the service is
        back) and transient server errors, with backoff; other errors are raised."""
        for attempt in range(retries + 1):
            try:
                resp = getattr(self.client.api, method)(path, **kwargs)
                resp.raise_for_status()
                return resp
            except APIError as exn:
                retry = attempt < retries and (
                    (_is_connection_error(exn) and self._recover(logger)) or _is_transient(exn)
                )
                if not retry:
                    raise
                logger.info(
                    _("podman request failed; retrying", request=f"{method.upper()} {path}",
                      error=_explain(exn), attempt=attempt + 1)
                )  # fmt: skip
                time.sleep(min(0.1 * 2**attempt, 2.0))
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Finish pending removals, close the client and stop the private service, if any
        (idempotent)."""
        self._remover.shutdown(wait=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if self._private is not None:
            self._private.stop()
            self._private = None

    def _dead_runs(self, logger: logging.Logger) -> List[Dict[str, Any]]:
        """Containers that miniwdl processes on this host left when they died (their pid label
        names no live process); other runs' and users' containers are never listed."""
        hostname = socket.gethostname()
        try:
            resp = self._request(
                "get",
                "/containers/json",
                logger,
                params={"all": True, "filters": json.dumps({"label": [LABEL_PID]})},
            )
        except APIError as exn:
            logger.warning(_("could not list leftover containers", error=_explain(exn)))
            return []
        return [
            c
            for c in resp.json() or []
            if (c.get("Labels") or {}).get(LABEL_HOST) == hostname
            and _left_by_dead_process((c.get("Labels") or {}).get(LABEL_PID, ""))
        ]

    def dead_run_containers(self, logger: logging.Logger) -> List[str]:
        """Names of the containers left by dead runs (see ``reap_dead_runs``)."""
        return [str((c.get("Names") or [c["Id"][:12]])[0]) for c in self._dead_runs(logger)]

    def reap_dead_runs(self, logger: logging.Logger) -> int:
        """Remove the containers left by dead miniwdl runs on this host; how many."""
        dead = self._dead_runs(logger)
        for c in dead:
            name = (c.get("Names") or [c["Id"][:12]])[0]
            self._remove(str(c["Id"]), name, logger, running=c.get("State") == "running")
        if dead:
            notice(logger, _("removed containers left by dead miniwdl runs", count=len(dead)))
        return len(dead)

    def remove_leftovers(self, logger: logging.Logger) -> None:
        """At process exit: finish pending removals, then remove any container of this process
        still registered (best effort)."""
        self._remover.shutdown(wait=True)
        with self._lock:
            leftovers = dict(self._live)
        for cid, name in leftovers.items():
            self._remove(cid, name, logger, running=True)

    # -- images -------------------------------------------------------------------------------

    def ensure_image(self, image: str, logger: logging.Logger) -> ImageRef:
        """``image`` in the local store, pulling it once per process if needed."""
        t0 = time.monotonic()
        ref, first = self._images.get(image, lambda: self._resolve_image(image, logger))
        if not first:
            logger.info(_("image ready", image=image, id=ref.id[:12], waited=time.monotonic() - t0))
        return ref

    def local_image(self, ref: str, logger: logging.Logger) -> Optional[ImageRef]:
        """The image ``ref`` (name or id) in the local store, or None; retried like every
        idempotent request."""
        try:
            resp = self._request("get", f"/images/{ref}/json", logger)
        except NotFound:
            return None
        except APIError as exn:
            if exn.status_code in (400, 404):
                return None
            raise
        attrs = resp.json()
        if not attrs.get("Id"):
            return None
        return ImageRef(
            id=str(attrs["Id"]), user=str((attrs.get("Config") or {}).get("User") or "")
        )

    def smallest_local_image(self, logger: logging.Logger) -> Optional[ImageRef]:
        """The smallest image in the local store (for doctor's test container), or None."""
        resp = self._request("get", "/images/json", logger)
        candidates = sorted(resp.json() or [], key=lambda i: i.get("Size", 0))
        return ImageRef(id=str(candidates[0]["Id"])) if candidates else None

    def _resolve_image(self, image: str, logger: logging.Logger) -> ImageRef:
        try:
            images_mod.validate(image)
        except Exception as exn:
            raise ImagePullFailed(image, str(exn)) from None
        policy = self.settings.pull
        try:
            if policy != "always":
                local = self.local_image(image, logger)
                if local:
                    logger.info(
                        _("image in local store", image=image, id=local.id[:12], user=local.user)
                    )
                    return local
                if policy == "never":
                    raise ImagePullFailed(
                        image,
                        f"container image {image} is not in the local Podman store and"
                        f" [{SECTION}] pull = never; `podman pull {image}` first, or set"
                        f" [{SECTION}] pull = missing",
                    )
            with self.image_lock(image):
                # another of this user's processes may have pulled it while we waited
                if policy != "always":
                    local = self.local_image(image, logger)
                    if local:
                        logger.info(_("image pulled by another run", image=image))
                        return local
                image_id = self._pull(image, logger)
            pulled = self.local_image(image_id, logger)
            if pulled is None:
                raise ImagePullFailed(image, f"pulled image {image} vanished from the store")
            return pulled
        except APIError as exn:
            logger.error(_("podman image lookup failed", image=image, error=_explain(exn)))
            raise ImagePullFailed(
                image, f"cannot look up container image {image}: {_explain(exn)}"
            ) from None

    def _pull(self, image: str, logger: logging.Logger) -> str:
        ref = images_mod.qualify(image)
        logger.info(_("pulling image", image=image, reference=ref))
        t0 = time.monotonic()
        errors: List[str] = []
        image_id: Optional[str] = None
        resp = self.client.api.post(
            "/images/pull",
            params={"reference": ref, "policy": "always", "quiet": False},
            stream=True,
            timeout=_UNBOUNDED,
        )
        if resp.status_code >= 400:
            # Podman 6 answers a failed pull with an error status and a JSON body; up to 5.x
            # the answer is 200 and the error comes in the stream: both are the registry's word
            try:
                resp.raise_for_status()
            except APIError as exn:
                errors.append(_explain(exn))
        for line in resp.iter_lines() if not errors else ():
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("error"):
                errors.append(str(obj["error"]).strip())
            if obj.get("id"):
                image_id = str(obj["id"])
            elif obj.get("images"):
                image_id = str(obj["images"][0])
        if errors or not image_id:
            message = errors[-1] if errors else "the service reported no image"
            logger.error(_("image pull failed", image=image, reference=ref, error=message))
            fix = hint_for(message, self.graph_root)
            if fix == GENERIC_HINT:
                fix = (
                    "check the name and that the registry is reachable, or load the image into"
                    " the local store (`podman load`/`podman pull`) beforehand"
                )
            raise ImagePullFailed(
                image,
                f"cannot pull container image {image}"
                + (f" ({ref})" if ref != image else "")
                + f": {message}; {fix}",
            )
        notice(
            logger,
            _(
                "image pulled",
                image=image,
                reference=ref,
                id=image_id[:12],
                seconds=round(time.monotonic() - t0, 2),
            ),
        )
        return image_id

    def build_image(self, dockerfile: str, log_path: str, logger: logging.Logger) -> ImageRef:
        """Build an inline Dockerfile once per content (cached in the store by its hash)."""
        digest = hashlib.sha256(dockerfile.encode("utf-8")).hexdigest()
        tag = f"{INLINE_REPO}:{digest[:40]}"
        ref, first = self._images.get(tag, lambda: self._build(dockerfile, tag, log_path, logger))
        if not first:
            logger.info(_("inlineDockerfile image ready", tag=tag, id=ref.id[:12]))
        return ref

    def _build(self, dockerfile: str, tag: str, log_path: str, logger: logging.Logger) -> ImageRef:
        cached = self.local_image(tag, logger)
        if cached is not None:
            notice(logger, _("inlineDockerfile image cached", tag=tag, id=cached.id[:12]))
            return cached
        logger.info(_("building inlineDockerfile image", tag=tag))
        t0 = time.monotonic()
        lines: List[str] = []
        try:
            _image, log = self.client.images.build(
                fileobj=io.StringIO(dockerfile), tag=tag, rm=True, timeout=_BUILD_TIMEOUT
            )
            lines = _build_log_lines(log)
        except BuildError as exn:
            lines = _build_log_lines(exn.build_log)
            lines.extend(
                f"error: {ln}"
                for ln in str(exn.msg).splitlines()
                if ln.strip() and not any(ln.strip() in seen for seen in lines)
            )
        except (APIError, PodmanException) as exn:
            lines.append(f"error: {_explain(exn)}")
        with open(log_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        built = self.local_image(tag, logger)
        if built is None:
            tail = " | ".join(" ".join(ln.split()) for ln in lines[-6:] if ln.strip())
            logger.error(_("inlineDockerfile build failed", tag=tag, log=log_path))
            raise ContainerFailed(
                f"building the task's runtime.inlineDockerfile failed: {tail}"
                f" (whole build log: {log_path})"
            )
        notice(
            logger,
            _(
                "inlineDockerfile image built",
                tag=tag,
                id=built.id[:12],
                seconds=round(time.monotonic() - t0, 2),
                log=log_path,
            ),
        )
        return built

    @contextlib.contextmanager
    def image_probe(self, image_id: str, logger: logging.Logger) -> Iterator[ImageProbe]:
        """An unstarted container of the image, to read files and test paths; removed after."""
        probe = ContainerSpec(
            name=f"miniwdl-probe-{image_id[:12]}-{os.getpid()}-{threading.get_ident() % 100000}",
            image=image_id,
            command=["true"],
            working_dir="/",
            mounts=[],
            identity=Identity(userns=""),
            labels={**spec_labels("image-probe", ""), LABEL_PROBE: "1"},
            network="none",
            init=False,
        )
        cid = self._create(probe, logger)
        try:
            yield ImageProbe(self.client, cid)
        finally:
            self._remove(cid, probe.name, logger, running=False)

    def unshare_chown(self, paths: List[str]) -> Optional[str]:
        """Give ``paths`` back to the invoking user via ``podman unshare chown``; error or None.

        Inside ``podman unshare`` the invoking user is root and subordinate ids are visible, so
        files a task left owned by other (subordinate) uids can be chowned to 0:0, which is the
        invoking user on the host. This runs no container.
        """
        exe = shutil.which(self.settings.podman) or self.settings.podman
        for i in range(0, len(paths), 500):
            chunk = paths[i : i + 500]
            try:
                proc = subprocess.run(
                    [exe, "unshare", "chown", "-h", "0:0", "--", *chunk],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    env=service_mod.podman_environ(os.environ),
                )
            except (OSError, subprocess.SubprocessError) as exn:
                return str(exn)
            if proc.returncode != 0:
                return proc.stderr.strip() or f"exit status {proc.returncode}"
        return None

    # -- containers ---------------------------------------------------------------------------

    def run(
        self,
        spec: ContainerSpec,
        logger: logging.Logger,
        terminating: Callable[[], bool],
        poll: Callable[[], None],
        running: Callable[[str], None],
        poll_period: float = 1.0,
    ) -> Exit:
        """Create, start and wait for the container; remove it on every path. ``running`` is
        called with the container id once it has started; ``poll`` every ``poll_period``
        while it runs, and once after it exits."""
        cid: Optional[str] = None
        exited = False
        try:
            cid = self._create(spec, logger)
            self._start(cid, spec, logger)
            running(cid)
            exit_code = self._wait(cid, spec, logger, terminating, poll, poll_period)
            exited = True
            if exit_code == 0:
                return Exit(0)
            # a container removed behind our back also "exits" (137, killed first): that is not
            # the command's; the removal completes just after the wait returns, so give a
            # signal-like exit a moment to show whether the container is going away
            state = self._state(cid, logger)
            deadline = time.monotonic() + (0.5 if exit_code in (137, 143) else 0.0)
            while state is not None and time.monotonic() < deadline:
                time.sleep(0.05)
                state = self._state(cid, logger)
            if state is None:
                logger.error(_("podman container disappeared while running", name=spec.name))
                raise Interrupted(
                    f"task container {spec.name} was removed while the task ran (by `podman rm`"
                    " or `podman system prune`?); its exit status is not the command's"
                )
            return Exit(exit_code, bool(state.get("OOMKilled")))
        finally:
            if cid is not None and exited:
                # off the critical path: the task's result does not depend on the removal, and
                # close()/remove_leftovers() wait for pending removals, so nothing is orphaned
                self._remover.submit(self._remove, cid, spec.name, logger, False)
            elif cid is not None:
                self._remove(cid, spec.name, logger, running=True)

    def _create(self, spec: ContainerSpec, logger: logging.Logger) -> str:
        payload = libpod.create_body(spec)
        logger.debug(
            _(
                "podman create request",
                name=spec.name,
                userns=payload.get("userns"),
                user=payload.get("user"),
                selinux_opts=payload.get("selinux_opts"),
                mounts=[
                    {
                        "source": m["source"],
                        "destination": m["destination"],
                        "options": m["options"],
                    }
                    for m in payload["mounts"]
                ],
            )
        )
        body = json.dumps(payload)
        warnings: List[str] = []
        cid = ""
        for attempt in range(1, _CREATE_TRIES + 1):
            try:
                # Podman 4.3 computes keep-id mappings racily under concurrent creates (500
                # "keep-id requires additional UIDs..."); the server serialises creates anyway,
                # so one create at a time from this process costs little and avoids it.
                with self._create_lock:
                    resp = self.client.api.post(
                        "/containers/create",
                        headers={"content-type": "application/json"},
                        data=body,
                    )
                resp.raise_for_status()
                answer = resp.json()
                cid, warnings = str(answer["Id"]), list(answer.get("Warnings") or [])
                break
            except APIError as exn:
                if attempt < _CREATE_TRIES and _is_connection_error(exn) and self._recover(logger):
                    # the create may have happened before the connection broke: adopt it
                    adopted = self._id_of(spec.name)
                    if adopted:
                        cid = adopted
                        break
                    continue
                if attempt < _CREATE_TRIES and _is_transient(exn):
                    logger.info(_("podman create: transient error, retrying", error=_explain(exn)))
                    time.sleep(0.05 * 2**attempt)
                    continue
                logger.error(_("podman create failed", name=spec.name, error=_explain(exn)))
                if _is_connection_error(exn):
                    raise PodmanUnavailable(
                        f"Podman API service at {self.url} stopped answering: {_explain(exn)}"
                    ) from None
                raise ContainerFailed(
                    f"Podman could not create the task container: {_explain(exn)};"
                    f" {hint_for(_explain(exn), self.graph_root)}"
                ) from None
        with self._lock:
            self._live[cid] = spec.name
        for warning in warnings:
            logger.warning(_("podman create warning", name=spec.name, warning=warning))
        logger.info(_("podman container created", name=spec.name, id=cid[:12]))
        return cid

    def _start(self, cid: str, spec: ContainerSpec, logger: logging.Logger) -> None:
        try:
            self._request("post", f"/containers/{cid}/start", logger)
        except APIError as exn:
            logger.error(_("podman start failed", name=spec.name, error=_explain(exn)))
            raise ContainerFailed(
                f"Podman could not start the task container: {_explain(exn)};"
                f" {hint_for(_explain(exn), self.graph_root)}"
            ) from None
        notice(logger, _("podman container started", name=spec.name, id=cid[:12]))

    def _id_of(self, name: str) -> Optional[str]:
        """The id of the container named ``name``, if it exists."""
        try:
            resp = self.client.api.get(f"/containers/{name}/json")
            resp.raise_for_status()
            return str(resp.json()["Id"])
        except APIError:
            return None

    def _wait_once(self, cid: str) -> int:
        """Block until the container exits; its exit code. Polls fast for the first
        ``wait_fast_seconds`` (short tasks return at once), then slowly: each waiting request
        costs the service a state check per interval, for as long as the task runs."""
        params = {"condition": ["exited", "stopped"], "interval": self._fast_interval()}
        try:
            resp = self.client.api.post(
                f"/containers/{cid}/wait",
                params=params,
                timeout=(30.0, self.settings.wait_fast_seconds),
            )
        except APIError as exn:
            if not isinstance(exn.__cause__, requests.exceptions.ReadTimeout):
                raise
            # the service stops polling for an abandoned wait (measured): wait again, slowly
            params["interval"] = self.settings.wait_interval_long
            resp = self.client.api.post(
                f"/containers/{cid}/wait", params=params, timeout=_UNBOUNDED
            )
        resp.raise_for_status()
        return int(resp.json())

    def _fast_interval(self) -> str:
        """``wait_interval``, stretched so that all of this process's waits together ask the
        service for at most ``_POLLS_PER_SECOND`` state checks (each costs it CPU, which the
        tasks need when many run at once)."""
        base = seconds(self.settings.wait_interval)
        with self._lock:
            waiting = self._waiting
        return f"{max(base, waiting / _POLLS_PER_SECOND) * 1000:.0f}ms"

    def _wait(
        self,
        cid: str,
        spec: ContainerSpec,
        logger: logging.Logger,
        terminating: Callable[[], bool],
        poll: Callable[[], None],
        poll_period: float,
    ) -> int:
        """Wait for exit in a helper thread, polling stderr and miniwdl's termination flag."""
        outcome: Dict[str, Any] = {}
        done = threading.Event()

        def waiter() -> None:
            with self._lock:
                self._waiting += 1
            try:
                outcome["exit_code"] = self._wait_once(cid)
            except BaseException as exn:
                outcome["error"] = exn
            finally:
                with self._lock:
                    self._waiting -= 1
                done.set()

        reconnects = 0
        while True:
            done.clear()
            outcome.clear()
            threading.Thread(target=waiter, name=f"wait-{spec.name}", daemon=True).start()
            while not done.wait(poll_period):
                poll()
                if terminating():
                    self._kill(cid, spec.name, logger)
                    done.wait(10)
                    raise Terminated()
            poll()
            if "exit_code" in outcome:
                exit_code = int(outcome["exit_code"])
                if exit_code < 0:
                    raise Interrupted(
                        f"Podman could not determine how the task container {spec.name} ended"
                    )
                msg = _("podman container exited", name=spec.name, exit_code=exit_code)
                if exit_code == 0:
                    notice(logger, msg)
                else:
                    logger.error(msg)
                return exit_code
            exn = outcome["error"]
            if isinstance(exn, NotFound):
                raise Interrupted(f"task container {spec.name} disappeared while running") from None
            if _is_connection_error(exn) and reconnects < 5:
                reconnects += 1
                logger.warning(
                    _("lost the podman service while waiting; reconnecting", error=_explain(exn))
                )
                time.sleep(min(2.0**reconnects * 0.1, 3.0))
                self._recover(logger)
                continue
            logger.error(_("podman wait failed", name=spec.name, error=_explain(exn)))
            raise Interrupted(
                f"lost track of task container {spec.name}: {_explain(exn)}"
            ) from None

    def _state(self, cid: str, logger: logging.Logger) -> Optional[Dict[str, Any]]:
        """The container's State (OOMKilled is unreliable upstream: podman#21749); None if the
        container no longer exists."""
        try:
            resp = self._request("get", f"/containers/{cid}/json", logger)
        except NotFound:
            return None
        except APIError:
            return {}
        return dict(resp.json().get("State") or {})

    def container_pid(self, cid: str, logger: logging.Logger) -> int:
        """The host pid of the running container's first process; 0 once it has exited."""
        state = self._state(cid, logger)
        return int((state or {}).get("Pid") or 0)

    def _kill(self, cid: str, name: str, logger: logging.Logger) -> None:
        try:
            self._request("post", f"/containers/{cid}/kill", logger, params={"signal": "SIGKILL"})
            logger.info(_("podman container killed", name=name))
        except APIError as exn:
            # already exited (e.g. Slurm signalled the whole job): nothing to kill
            gone = exn.status_code == 409 or "container state improper" in _explain(exn)
            if not isinstance(exn, NotFound) and not gone:
                logger.warning(_("podman kill failed", name=name, error=_explain(exn)))

    def _remove(self, cid: str, name: str, logger: logging.Logger, running: bool) -> None:
        """Remove the container (killing it first if it may still run); never raises."""
        try:
            if running:
                self._kill(cid, name, logger)
            self._request(
                "delete",
                f"/containers/{cid}",
                logger,
                params={"force": True, "v": True, "timeout": 0},
            )
        except NotFound:
            pass
        except Exception as exn:
            logger.error(
                _(
                    "podman container removal failed; remove it with `podman rm -f NAME`",
                    name=name,
                    error=_explain(exn),
                )
            )
            return
        with self._lock:
            self._live.pop(cid, None)
        logger.debug(_("podman container removed", name=name))


def pool_size_for(task_concurrency: int) -> int:
    """Connections to keep: one blocking wait per running task, plus room for other calls."""
    return max(16, 2 * task_concurrency + 8)
