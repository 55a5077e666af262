"""The connection to one Podman API service: which service, its facts, retried requests.

:class:`Connection` finds the user's API socket (``[podman_rootless] socket``, then
``CONTAINER_HOST``, then ``$XDG_RUNTIME_DIR/podman/podman.sock``) or starts a private service
(:mod:`.processes`), holds the one podman-py client of the process (thread-safe, its pool sized
to the task concurrency), reads the service's :class:`~miniwdl_podman.podman_facts.PodmanFacts`
once, and sends idempotent requests with retries after transient errors and recovery after the
service went away (a private service is restarted; an external one is waited for). The helpers
here turn podman-py/requests exceptions into the one-line text users see.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from podman import PodmanClient
from podman.errors import APIError
from WDL._util import StructuredLogMessage as _

from .. import _backoff, podman_facts, storage
from .._logging import notice
from ..errors import PodmanUnavailable
from ..settings import SECTION, Settings
from ..shared_store import IMAGE_STORE_DRIVERS, storage_options
from . import processes
from .processes import SOCKET_NAME, runtime_base, unusable_environment, unusable_runtime_dir
from .services import PrivateService, WarmService, service_key

# (connect, read) timeout for requests that legitimately block for as long as the task runs
_UNBOUNDED = (30.0, None)
_BUILD_TIMEOUT = 24 * 3600.0
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


_PANIC = ("runtime error:", "nil pointer dereference", "panic:")


def is_panic(exn: APIError) -> bool:
    """A server error whose message is a Go panic: a fault of Podman, not of the request."""
    text = _explain(exn).lower()
    return exn.response is not None and exn.is_server_error() and any(p in text for p in _PANIC)


def podman_fault(exn: APIError, doing: str) -> str:
    """The message for a Podman fault (a Go panic in its API service) met while ``doing``."""
    return (
        f"Podman's API service crashed while {doing} (a Go panic: {_explain(exn)}): a fault of"
        " Podman itself, not of the task or the image. A known trigger is an environment that"
        " does not fit this host when the service started (e.g. TMPDIR naming a directory that"
        " does not exist: the backend removes such variables for the services it starts; for"
        " your own service, fix them and restart it); `podman info` as you shows what Podman"
        " reads, and a newer Podman may not have the bug"
    )


def _is_connection_error(exn: BaseException) -> bool:
    """An APIError raised because the service could not be reached (not an HTTP status)."""
    return isinstance(exn, APIError) and exn.response is None


# server errors that say nothing about the request and go away when it is sent again
_TRANSIENT = (
    "keep-id requires additional",
    "database is locked",
    "resource temporarily unavailable",
)


def _is_transient(exn: APIError) -> bool:
    return (
        exn.response is not None
        and exn.is_server_error()
        and any(marker in _explain(exn) for marker in _TRANSIENT)
    )


def ping(url: str, timeout: float = 3.0) -> bool:
    """Whether a Podman API service answers at ``url``."""
    try:
        with PodmanClient(base_url=url, timeout=timeout) as client:
            return bool(client.ping())
    except Exception:
        return False


def to_url(socket_or_url: str) -> str:
    """``/path/podman.sock`` → ``unix:///path/podman.sock``; URLs pass through."""
    s = socket_or_url.strip()
    if s.startswith("/"):
        return "unix://" + s
    return s


def candidate(settings: Settings, environ: Mapping[str, str]) -> Tuple[Optional[str], str]:
    """The socket URL to try first and where it came from (for the log and error messages)."""
    if settings.socket:
        return to_url(settings.socket), f"[{SECTION}] socket"
    if environ.get("CONTAINER_HOST"):
        return to_url(environ["CONTAINER_HOST"]), "CONTAINER_HOST"
    xdg = environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return to_url(os.path.join(xdg, "podman", SOCKET_NAME)), "XDG_RUNTIME_DIR"
    return None, "no socket configured and XDG_RUNTIME_DIR is not set"


class Connection:
    """One Podman API service and the process's client to it."""

    def __init__(
        self, settings: Settings, pool_size: int = 32, image_stores: Sequence[str] = ()
    ) -> None:
        self.settings = settings
        # additional read-only image stores (shared_store) given to a private service
        self.image_stores = tuple(image_stores)
        self.pool_size = max(16, pool_size)
        self.url = ""
        self.source = ""
        self.info: Dict[str, Any] = {}
        self.facts = podman_facts.PodmanFacts()
        self._private: Optional[PrivateService] = None
        self._client: Optional[PodmanClient] = None
        self._recover_lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------------

    def connect(self, logger: logging.Logger, cached_facts: bool = True) -> None:
        """Find the user's API socket or start a private service; log which and the version.
        With ``cached_facts``, a warm service's facts are taken from its cache while they hold
        (:meth:`WarmService.cached_info`); without, they are always asked (doctor)."""
        s = self.settings
        url, source = candidate(s, os.environ)
        if url and not url.startswith(("unix://", "http+unix://")):
            raise PodmanUnavailable(
                f"the Podman API service at {url} (from {source}) is not on this host, and this"
                " backend needs one that is: inputs are mounted in place from this host's file"
                " system, task usage is read from this host's /proc and ownership is repaired"
                " with this host's `podman unshare`; use a unix socket of a service running"
                f" here, or leave [{SECTION}] socket empty (and unset CONTAINER_HOST) for a"
                " private service. To run tasks on other hosts, use the podman_rootless_slurm"
                " backend"
            )
        if self.image_stores and s.service == "external":
            raise PodmanUnavailable(
                f"[{SECTION}] shared_store needs a Podman service that the backend starts (it"
                f" is given the shared image stores), but [{SECTION}] service = external; set"
                f" service = auto, or leave shared_store empty"
            )
        if s.service != "private" and not self.image_stores and url and ping(url):
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
            if self.image_stores:
                logger.info(_("a private service reads the shared image stores",
                              stores=len(self.image_stores)))  # fmt: skip
            elif url and s.service == "auto":
                logger.info(_("podman socket not answering; starting a private service", url=url))
            unusable = unusable_runtime_dir(os.environ)
            if unusable is not None:
                logger.warning(
                    _(
                        "XDG_RUNTIME_DIR is not a directory you can write (a login node's, in a"
                        " batch job? another user's, after su?); Podman runs without it",
                        XDG_RUNTIME_DIR=unusable,
                    )
                )
            others = {
                var: f"{os.environ[var]} ({why})"
                for var, why in unusable_environment(os.environ).items()
                if var != "XDG_RUNTIME_DIR"
            }
            if others:
                logger.warning(
                    _(
                        "environment variables that Podman reads name nothing usable here (a"
                        " login node's, in a batch job? stale, after su?); the Podman processes"
                        " the backend starts run without them",
                        **others,
                    )
                )
            base = runtime_base(s, os.environ)
            late = self._store_args if self.image_stores else None
            if s.service_idle > 0:
                key = service_key(s.podman, [*s.service_args, *self.image_stores], s.service_idle)
                warm = WarmService(s.podman, base, s.service_args, s.service_idle, key, late)
                self._private = warm
                warm.start(ping, s.service_start_timeout)
                self.source = (
                    "private service (warm, reused)" if warm.reused else ("private service (warm)")
                )
            else:
                self._private = PrivateService(s.podman, base, s.service_args, late)
                self._private.start(ping, s.service_start_timeout)
                self.source = "private service"
            self._private.report_swept(logger)
            self.url = self._private.url
        self._client = PodmanClient(
            base_url=self.url, timeout=s.api_timeout, max_pool_size=self.pool_size
        )
        kept = self._private if isinstance(self._private, WarmService) else None
        cached = kept.cached_info() if kept is not None and cached_facts else None
        try:
            if kept is not None and cached is not None:
                self.info = cached
                logger.info(
                    _("podman service facts cached", url=self.url, facts_from=kept.info_from)
                )
            else:
                # /info carries the version too: no /version request (it costs the service as
                # much as /info again, 0.23-0.30 s a call on 4.3.1)
                self.info = self._client.info()
                if kept is not None:
                    kept.remember_info(self.info)
        except APIError as exn:
            self.close()
            raise PodmanUnavailable(
                f"Podman API service at {self.url} answered ping but not info:"
                f" {_explain(exn)}; check `podman info` as this user"
            ) from None
        facts = self.facts = podman_facts.from_service(self.info)
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
        for finding in storage.judge(facts.graph_root, facts.run_root, facts.storage_driver):
            logger.warning(
                _(
                    f"{finding.problem}; {finding.fix}",
                    graph_root=facts.graph_root,
                    run_root=facts.run_root,
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

    def recover(self, logger: logging.Logger) -> bool:
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
                time.sleep(_backoff.delay(0, 0.5, 0.5))
            return False

    def _store_args(self) -> List[str]:
        """The service's ``--storage-opt`` arguments for the shared image stores (the user's own
        driver options kept: Podman drops them when given any)."""
        s = self.settings
        driver, options = processes.storage_facts(s.podman, list(s.service_args))
        if driver not in IMAGE_STORE_DRIVERS:
            raise PodmanUnavailable(
                f"[{SECTION}] shared_store needs the overlay storage driver, and your Podman"
                f' store uses {driver or "an unknown driver"}; set driver = "overlay" in'
                " ~/.config/containers/storage.conf (`miniwdl-podman doctor --fix` does), or"
                " leave shared_store empty"
            )
        return storage_options(driver, options, list(self.image_stores))

    def request(
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
                    (_is_connection_error(exn) and self.recover(logger)) or _is_transient(exn)
                )
                if not retry:
                    raise
                logger.info(
                    _("podman request failed; retrying", request=f"{method.upper()} {path}",
                      error=_explain(exn), attempt=attempt + 1)
                )  # fmt: skip
                time.sleep(_backoff.delay(attempt, 0.1, 2.0))
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the client and stop the private service, if any (idempotent)."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if self._private is not None:
            self._private.stop()
            self._private = None
