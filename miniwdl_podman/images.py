"""Image references: validation and qualification, the way Podman and Docker spell them.

Pure functions only. Through the API, short names never prompt and, with no
unqualified-search registries configured, fail to resolve; so before a pull the backend
qualifies a short name the way Docker Hub users expect (``ubuntu:22.04`` →
``docker.io/library/ubuntu:22.04``). A name that already exists in the local store is used as it
is, without any registry being contacted.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Dict, Mapping

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


def registry_credentials(auth_file: Mapping[str, Any]) -> Dict[str, Dict[str, str]]:
    """The credentials in a containers-auth.json(5) document (``podman login --authfile``'s):
    registry → username and password, from each entry's ``auth`` (base64 of ``user:password``)
    or its ``username``/``password``. Entries without either (credential helpers, identity
    tokens) are left out."""
    ans: Dict[str, Dict[str, str]] = {}
    for registry, entry in (auth_file.get("auths") or {}).items():
        if not isinstance(entry, dict):
            continue
        user, password = str(entry.get("username") or ""), str(entry.get("password") or "")
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                continue
        if user and password:
            ans[str(registry)] = {"username": user, "password": password}
    return ans


def registry_config_header(credentials: Mapping[str, Mapping[str, str]]) -> str:
    """Podman's ``X-Registry-Config`` header for these credentials (base64url of their JSON,
    as podman-remote sends it): an API service uses them for the request, whatever auth file
    it would read itself."""
    return base64.urlsafe_b64encode(json.dumps(dict(credentials)).encode()).decode()
