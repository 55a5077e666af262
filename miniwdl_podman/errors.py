"""User-facing error types of the backend.

Every error raised to miniwdl is one of these (or one of miniwdl's own runtime errors), and its
message names the cause *and* the fix: which option to set or which command to run. The engine
translates podman-py exceptions into these at its boundary, so no podman-py or requests type
ever reaches miniwdl, and miniwdl prints one line instead of a traceback.
"""

from __future__ import annotations

from WDL import Error
from WDL.runtime.error import DownloadFailed, Interrupted

__all__ = [
    "ConfigError",
    "ContainerFailed",
    "DownloadFailed",
    "ImagePullFailed",
    "Interrupted",
    "PodmanError",
    "PodmanUnavailable",
]


class PodmanError(Error.RuntimeError):
    """Base class of the backend's own errors."""


class ConfigError(PodmanError):
    """A ``[podman_rootless]`` option has an invalid value; the message names the option."""


class PodmanUnavailable(PodmanError):
    """No Podman API service could be reached or started."""


class ContainerFailed(PodmanError):
    """Podman refused to create or start the task's container (not the command's exit code)."""


class ImagePullFailed(DownloadFailed):
    """An image could not be found locally nor pulled; carries the registry's message."""

    def __init__(self, image: str, message: str) -> None:
        super().__init__(image, message)
        self.image = image
