"""Image reference validation and qualification."""

from __future__ import annotations

import pytest

from miniwdl_podman import images
from miniwdl_podman.errors import ConfigError


@pytest.mark.parametrize(
    ("given", "qualified"),
    [
        ("ubuntu", "docker.io/library/ubuntu:latest"),
        ("ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
        ("biocontainers/samtools:1.9", "docker.io/biocontainers/samtools:1.9"),
        ("docker.io/ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
        ("quay.io/biocontainers/samtools", "quay.io/biocontainers/samtools:latest"),
        ("localhost/x/y:1", "localhost/x/y:1"),
        ("127.0.0.1:5000/a/b:1", "127.0.0.1:5000/a/b:1"),
        ("registry:5000/a", "registry:5000/a:latest"),
        ("ubuntu@sha256:" + "a" * 64, "docker.io/library/ubuntu@sha256:" + "a" * 64),
    ],
)
def test_qualify_like_docker(given: str, qualified: str) -> None:
    """Short names gain docker.io[/library] and :latest; qualified names keep their registry."""
    assert images.qualify(given) == qualified


@pytest.mark.parametrize(
    "bad", ["", "UPPER:1", "lib/Upper", "a::b", "a b", "x:", "-lead", "a/../b"]
)
def test_invalid_names_are_refused_naming_the_image(bad: str) -> None:
    """A malformed reference raises ConfigError that quotes it."""
    with pytest.raises(ConfigError) as info:
        images.validate(bad)
    assert repr(bad) in str(info.value)


def test_has_registry() -> None:
    """The first component is a registry only with '.', ':' or 'localhost'."""
    assert images.has_registry("quay.io/x")
    assert images.has_registry("localhost/x")
    assert images.has_registry("host:5000/x")
    assert not images.has_registry("library/ubuntu")
    assert not images.has_registry("ubuntu:22.04")


def test_registry_credentials_are_read_from_an_auth_file_as_podman_login_writes_it() -> None:
    """``auth`` (base64 of user:password) and username/password entries are read; entries a
    credential helper or an identity token serve are left out; the header is base64url JSON."""
    import base64
    import json

    doc = {
        "auths": {
            "reg.example:5002": {"auth": base64.b64encode(b"alice:s3cr:et").decode()},
            "other.example/team": {"username": "bob", "password": "pw"},
            "helper.example": {},
            "token.example": {"identitytoken": "abc"},
            "broken.example": {"auth": "!!!"},
        },
        "credHelpers": {"helper.example": "secretservice"},
    }
    found = images.registry_credentials(doc)
    assert found == {
        "reg.example:5002": {"username": "alice", "password": "s3cr:et"},
        "other.example/team": {"username": "bob", "password": "pw"},
    }
    header = images.registry_config_header(found)
    assert json.loads(base64.urlsafe_b64decode(header)) == found
    assert images.registry_credentials({}) == {}
