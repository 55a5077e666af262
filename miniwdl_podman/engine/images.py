"""The local image store: resolve (pull once per process), build inline Dockerfiles, probe.

:class:`Images` resolves each image once per process (concurrent tasks wait on the same pull;
a pull is held under the caller's cross-process lock), reads pull failures in both of Podman's
forms (an ``error`` in a 200 stream up to 5.x, an HTTP error status from 6.0), builds
``runtime.inlineDockerfile`` images once per content, and answers read-only questions about an
image's files from an unstarted container (:class:`ImageProbe`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tarfile
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Tuple

from podman import PodmanClient
from podman.errors import APIError, BuildError, NotFound
from podman.errors import PodmanError as PodmanException
from WDL._util import StructuredLogMessage as _

from .. import images as references
from .. import spec as spec_mod
from .._logging import notice
from .._once import Once
from ..errors import GENERIC_HINT, ContainerFailed, ImagePullFailed, PodmanUnavailable, hint_for
from ..settings import SECTION
from ..shared_store import Staged
from .connection import _UNBOUNDED, Connection, _explain, is_panic, podman_fault
from .containers import Containers

_BUILD_TIMEOUT = 24 * 3600.0
INLINE_REPO = "localhost/miniwdl-inline"


@dataclass(frozen=True)
class ImageRef:
    """An image in the local store: its id, the user its config runs as, and its manifest
    digest (``sha256:...``; empty if the store does not know one)."""

    id: str
    user: str = ""
    digest: str = ""
    repo_digests: Tuple[str, ...] = ()  # ``repository@digest`` for each repository it came from


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


class Images:
    """The images of the service's store, as the process's tasks need them."""

    def __init__(
        self,
        conn: Connection,
        containers: Containers,
        image_lock: Callable[[str], ContextManager[object]],
        shared: Callable[[str], Optional[Staged]] = lambda _name: None,
    ) -> None:
        self.conn = conn
        # the image a name stands for in the shared store (one the service reads), if any
        self.shared = shared
        self.containers = containers
        self.settings = conn.settings
        # held around a pull: the caller's cross-process lock (one pull of an image per user)
        self.image_lock = image_lock
        self._images: Once[ImageRef] = Once()

    def ensure(self, image: str, logger: logging.Logger) -> ImageRef:
        """``image`` in the local store, pulling it once per process if needed."""
        t0 = time.monotonic()
        ref, first = self._images.get(image, lambda: self._resolve(image, logger))
        if not first:
            logger.info(_("image ready", image=image, id=ref.id[:12], waited=time.monotonic() - t0))
        return ref

    def fetch(self, image: str, logger: logging.Logger) -> ImageRef:
        """``image`` in the user's own store (the pull policy applies; the shared store is not
        looked at): what is staged into the shared store."""
        return self._resolve(image, logger, shared=False)

    def local(self, ref: str, logger: logging.Logger) -> Optional[ImageRef]:
        """The image ``ref`` (name or id) in the local store, or None; retried like every
        idempotent request."""
        try:
            resp = self.conn.request("get", f"/images/{ref}/json", logger)
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
            id=str(attrs["Id"]),
            user=str((attrs.get("Config") or {}).get("User") or ""),
            digest=str(attrs.get("Digest") or ""),
            repo_digests=tuple(str(d) for d in attrs.get("RepoDigests") or ()),
        )

    def smallest_local(self, logger: logging.Logger) -> Optional[ImageRef]:
        """The smallest image in the local store that runs as root (for doctor's test task:
        it tests Podman, not an image's USER), else the smallest; None if the store is empty.
        At most the ten smallest are inspected."""
        resp = self.conn.request("get", "/images/json", logger)
        candidates = sorted(resp.json() or [], key=lambda i: (i.get("Size", 0), i.get("Id", "")))
        for c in candidates[:10]:
            ref = self.local(str(c["Id"]), logger)
            if ref is not None and ref.user in ("", "0", "root", "0:0", "root:root"):
                return ref
        return ImageRef(id=str(candidates[0]["Id"])) if candidates else None

    def _resolve(self, image: str, logger: logging.Logger, shared: bool = True) -> ImageRef:
        try:
            references.validate(image)
        except Exception as exn:
            raise ImagePullFailed(image, str(exn)) from None
        policy = self.settings.pull
        try:
            staged = self.shared(image) if shared else None
            if staged is not None:
                ref = self.local(staged.id, logger)
                if ref is not None:
                    logger.info(_("image in shared store", image=image, id=ref.id[:12],
                                  user=ref.user, store=staged.store))  # fmt: skip
                    return ImageRef(ref.id, ref.user, staged.digest or ref.digest)
                logger.warning(
                    _("image staged in the shared store but not readable there; using your own"
                      " store", image=image, store=staged.store)
                )  # fmt: skip
            if policy != "always":
                local = self.local(image, logger)
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
                    local = self.local(image, logger)
                    if local:
                        logger.info(_("image pulled by another run", image=image))
                        return local
                image_id = self._pull(image, logger)
            pulled = self.local(image_id, logger)
            if pulled is None:
                raise ImagePullFailed(image, f"pulled image {image} vanished from the store")
            return pulled
        except APIError as exn:
            logger.error(_("podman image lookup failed", image=image, error=_explain(exn)))
            if is_panic(exn):
                raise PodmanUnavailable(podman_fault(exn, f"looking up image {image}")) from None
            raise ImagePullFailed(
                image, f"cannot look up container image {image}: {_explain(exn)}"
            ) from None

    @staticmethod
    def _credentials(logger: logging.Logger) -> Dict[str, str]:
        """The credentials of ``REGISTRY_AUTH_FILE``, as a request header: an API service reads
        only the default auth files itself (``$XDG_RUNTIME_DIR/containers/auth.json``,
        ``~/.config/containers/auth.json``, ``~/.docker/config.json``), as podman-remote's
        clients know; the variable is the CLI's."""
        path = os.environ.get("REGISTRY_AUTH_FILE")
        if not path:
            return {}
        try:
            with open(path) as f:
                found = references.registry_credentials(json.load(f))
        except (OSError, ValueError, AttributeError) as exn:
            logger.warning(
                _(
                    "REGISTRY_AUTH_FILE cannot be read; pulling without its credentials (make"
                    " it with `podman login --authfile FILE REGISTRY`)",
                    REGISTRY_AUTH_FILE=path,
                    error=str(exn),
                )
            )
            return {}
        if not found:
            return {}
        logger.info(_("registry credentials from REGISTRY_AUTH_FILE", registries=sorted(found)))
        return {"X-Registry-Config": references.registry_config_header(found)}

    def _pull(self, image: str, logger: logging.Logger) -> str:
        ref = references.qualify(image)
        logger.info(_("pulling image", image=image, reference=ref))
        t0 = time.monotonic()
        errors: List[str] = []
        image_id: Optional[str] = None
        resp = self.conn.client.api.post(
            "/images/pull",
            params={"reference": ref, "policy": "always", "quiet": False},
            headers=self._credentials(logger),
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
            fix = hint_for(message, self.conn.graph_root)
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

    def build(self, dockerfile: str, log_path: str, logger: logging.Logger) -> ImageRef:
        """Build an inline Dockerfile once per content (cached in the store by its hash)."""
        digest = hashlib.sha256(dockerfile.encode("utf-8")).hexdigest()
        tag = f"{INLINE_REPO}:{digest[:40]}"
        ref, first = self._images.get(tag, lambda: self._build(dockerfile, tag, log_path, logger))
        if not first:
            logger.info(_("inlineDockerfile image ready", tag=tag, id=ref.id[:12]))
        return ref

    def _build(self, dockerfile: str, tag: str, log_path: str, logger: logging.Logger) -> ImageRef:
        cached = self.local(tag, logger)
        if cached is not None:
            notice(logger, _("inlineDockerfile image cached", tag=tag, id=cached.id[:12]))
            return cached
        logger.info(_("building inlineDockerfile image", tag=tag))
        t0 = time.monotonic()
        lines: List[str] = []
        try:
            _image, log = self.conn.client.images.build(
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
        built = self.local(tag, logger)
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
    def probe(self, image_id: str, logger: logging.Logger) -> Iterator[ImageProbe]:
        """An unstarted container of the image, to read files and test paths; removed after."""
        probe = spec_mod.probe_spec(image_id)
        cid = self.containers.create(probe, logger)
        try:
            yield ImageProbe(self.conn.client, cid)
        finally:
            self.containers.remove(cid, probe.name, logger, running=False)
