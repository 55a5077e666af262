"""Staging an image into the shared read-only image store (:mod:`miniwdl_podman.shared_store`).

The image is first had in the user's own store as any task's would be (pull policy,
credentials, the pull lock), then copied into a fresh containers-storage root in the shared
store's staging area: exported from the user's service (``docker-archive``, streamed to a file)
and loaded by a short-lived private service of the staging root, with the user's own storage
driver options. The loaded copy carries no name (a name lives in the shared store's index), so
a name staged again, or a tag that moved, is never a duplicate inside a store Podman reads. The
finished root becomes visible by one rename (:meth:`SharedStore.commit`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from podman import PodmanClient
from podman.errors import APIError
from WDL._util import StructuredLogMessage as _

from .._logging import notice
from ..errors import ConfigError, ImagePullFailed, PodmanUnavailable
from ..settings import SECTION
from ..shared_store import SharedStore, Staged, storage_options
from . import processes
from .connection import _UNBOUNDED, Connection, _explain, ping
from .images import Images
from .processes import runtime_base
from .services import PrivateService


def stage(
    conn: Connection, images: Images, shared: SharedStore, image: str, logger: logging.Logger
) -> Staged:
    """``image`` in the shared store: the one staged under that name (unless ``pull =
    always``), else had in the user's store and staged (once, whoever else stages it at the
    same time); the name is then recorded for it."""
    try:
        return _stage(conn, images, shared, image, logger)
    except OSError as exn:
        raise ConfigError(
            f"cannot stage image {image} into the shared store {shared.root}:"
            f" {exn.strerror} ({exn.filename}); make it a directory you can write, or set"
            f" [{SECTION}] shared_store elsewhere"
        ) from None


def _stage(
    conn: Connection, images: Images, shared: SharedStore, image: str, logger: logging.Logger
) -> Staged:
    s = conn.settings
    found = shared.reusable(image, s.pull)
    if found is not None:
        logger.info(_("image in shared store", image=image, id=found.id[:12]))
        return found
    ref = images.fetch(image, logger)
    _sweep(shared, s.podman, logger)
    with shared.staging(ref.id) as work:
        if work is not None:
            t0 = time.monotonic()
            _fill(conn, ref.id, work, image, logger)
            shared.commit(work, ref.id, ref.digest, [image])
            took = round(time.monotonic() - t0, 2)
            notice(logger, _("image staged in shared store", image=image, id=ref.id[:12],
                             seconds=took, store=shared.root))  # fmt: skip
    staged = shared.by_id(ref.id)
    if staged is None:
        raise ImagePullFailed(image, f"image {image} vanished from the shared store {shared.root}")
    staged = Staged(staged.id, ref.digest or staged.digest, staged.store)
    shared.record_name(image, staged)
    return staged


def _fill(conn: Connection, image_id: str, work: str, image: str, logger: logging.Logger) -> None:
    """Copy the image from the user's store into ``work/store`` (nameless)."""
    s = conn.settings
    archive = os.path.join(work, "image.tar")
    try:
        resp = conn.client.api.get(
            f"/images/{image_id}/get", params={"format": "docker-archive"}, stream=True,
            timeout=_UNBOUNDED,
        )  # fmt: skip
        resp.raise_for_status()
        with open(archive, "wb") as out:
            for chunk in resp.iter_content(chunk_size=1 << 20):
                out.write(chunk)
    except APIError as exn:
        raise ImagePullFailed(
            image, f"cannot export image {image} from your Podman store: {_explain(exn)}"
        ) from None
    driver, options = processes.storage_facts(s.podman, list(s.service_args))
    # the user's own driver options, without their own additional stores
    options = {k: v for k, v in options.items() if not k.endswith(".imagestore")}
    args = ["--root", os.path.join(work, "store"), "--storage-driver", driver,
            *storage_options(driver, options, [])]  # fmt: skip
    # a run root of its own, removed with it (swept with it if this process is killed)
    service = PrivateService(s.podman, runtime_base(s, os.environ), args, own_run_root=True)
    try:
        service.start(ping, s.service_start_timeout)
        service.report_swept(logger)
        with (
            PodmanClient(base_url=service.url, timeout=s.api_timeout) as client,
            open(archive, "rb") as data,
        ):
            loaded = client.api.post(
                "/images/load", data=data, headers={"Content-type": "application/x-tar"},
                timeout=_UNBOUNDED,
            )  # fmt: skip
            loaded.raise_for_status()
            got = client.api.get(f"/images/{image_id}/json")
            got.raise_for_status()
            if got.json().get("RepoTags"):
                client.api.post(f"/images/{image_id}/untag").raise_for_status()
    except APIError as exn:
        raise ImagePullFailed(
            image, f"cannot load image {image} into the shared store: {_explain(exn)}"
        ) from None
    except PodmanUnavailable as exn:
        raise ImagePullFailed(image, f"cannot stage image {image}: {exn}") from None
    finally:
        service.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(archive)
    # the store's graph directory stays mounted on itself in the user's namespace after its
    # service stopped; the service's own database names the staging path (not part of a store)
    error = processes.unshare_release(s.podman, work, [os.path.join(work, "store", "libpod")])
    if error:
        raise ImagePullFailed(image, f"cannot finish staging image {image} in {work}: {error}")


def _sweep(shared: SharedStore, podman: str, logger: logging.Logger) -> None:
    """Remove the staging directories that killed stagings left (nothing reads them)."""
    for path in shared.abandoned():
        error = processes.unshare_release(podman, path, [path])
        if error:
            logger.warning(_("cannot remove an abandoned staging", path=path, error=error))
        else:
            logger.info(_("removed an abandoned staging", path=path))
