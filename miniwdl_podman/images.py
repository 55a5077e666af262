"""Image references: validation and qualification, the way Podman and Docker spell them.

Pure functions only. Through the API, short names never prompt and, with no
unqualified-search registries configured, fail to resolve; so before a pull the backend
qualifies a short name the way Docker Hub users expect (``ubuntu:22.04`` →
``docker.io/library/ubuntu:22.04``). A name that already exists in the local store is used as it
is, without any registry being contacted.
"""

from __future__ import annotations

import re

from .errors import ConfigError

# the grammar of github.com/distribution/reference, simplified to what we need to tell apart
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)


def validate(image: str) -> None:
    """Raise ConfigError naming the image if it is not a valid image reference."""
    if not image or not _REFERENCE.match(image) or len(image) > 4096:
        raise ConfigError(
            f"invalid container image name {image!r} in the task's runtime.docker/container;"
            " expected e.g. ubuntu:22.04, quay.io/org/tool:1.2 or name@sha256:<digest>"
        )


def has_registry(image: str) -> bool:
    """Whether the first path component names a registry (contains '.' or ':' or is localhost)."""
    first, sep, _ = image.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def qualify(image: str) -> str:
    """Fully qualify an image reference as Docker does: registry, namespace and tag.

    >>> qualify("ubuntu:22.04")
    'docker.io/library/ubuntu:22.04'
    >>> qualify("quay.io/biocontainers/samtools")
    'quay.io/biocontainers/samtools:latest'
    """
    validate(image)
    ans = image
    if not has_registry(ans):
        ans = "docker.io/" + ans
    if ans.startswith("docker.io/") and "/" not in ans[len("docker.io/") :].split("@")[0]:
        ans = "docker.io/library/" + ans[len("docker.io/") :]
    m = _REFERENCE.match(ans)
    assert m
    if not m.group("tag") and not m.group("digest"):
        ans += ":latest"
    return ans
