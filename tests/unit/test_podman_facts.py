"""What each Podman version can do, read from its service's answers (no Podman needed)."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from miniwdl_podman import libpod, podman_facts


def _facts(version: str, **host: Any) -> podman_facts.PodmanFacts:
    info: Dict[str, Any] = {
        "host": {"security": {"rootless": True}, **host},
        "store": {},
        "version": {"Version": version, "APIVersion": version},
    }
    return podman_facts.from_service(info)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("4.3.1", (4, 3, 1)), ("5.4.2", (5, 4, 2)), ("6.1.1-dev", (6, 1, 1)), ("5", (5, 0, 0)),
     ("", (0, 0, 0)), ("weird", (0, 0, 0))],
)  # fmt: skip
def test_versions_parse_to_comparable_tuples(text: str, parsed: tuple) -> None:
    """Release, dev and short version strings compare as numbers; unknown ones as zero."""
    assert podman_facts.parse_version(text) == parsed


def test_podman_older_than_4_3_is_refused_naming_the_version() -> None:
    """4.2 is refused with the version found, the oldest supported and the fix; 4.3 is not."""
    old = _facts("4.2.0")
    assert not old.supported
    assert old.unsupported_reason is not None
    assert "Podman 4.2.0 is older than 4.3.0" in old.unsupported_reason
    assert "upgrade Podman" in old.unsupported_reason
    assert _facts("4.3.1").unsupported_reason is None
    assert _facts("").supported  # a service that does not say is given the benefit of doubt


def test_default_rootless_network_by_version_or_as_the_service_says() -> None:
    """4.x says nothing (slirp4netns); 5.x says pasta; Podman 6 has no slirp4netns at all."""
    assert _facts("4.3.1").rootless_network == "slirp4netns"
    assert _facts("5.4.2", rootlessNetworkCmd="pasta").rootless_network == "pasta"
    assert _facts("5.0.0").rootless_network == "pasta"
    assert _facts("5.8.6").has_slirp4netns
    assert not _facts("6.1.1", rootlessNetworkCmd="pasta").has_slirp4netns
    assert not _facts("6.0.0").supports_cgroup_v1


def test_crun_fails_only_on_cgroup_v1() -> None:
    """crun is flagged on a cgroup v1 host only; on v2 it is Podman's right default."""

    def fails(version: str, cgroups: str, runtime: str) -> bool:
        facts = _facts(version, cgroupVersion=cgroups, ociRuntime={"name": runtime})
        return facts.runtime_fails_on_cgroups

    assert fails("4.3.1", "v1", "crun")
    assert not fails("5.4.2", "v2", "crun")
    assert not fails("4.3.1", "v1", "runc")


def test_controllers_and_store_are_read() -> None:
    """Delegated controllers and the store's driver and paths come from /info."""
    info = {
        "host": {"cgroupVersion": "v2", "cgroupControllers": ["memory", "pids"]},
        "store": {"graphDriverName": "overlay", "graphRoot": "/g", "runRoot": "/r"},
        "version": {"Version": "6.1.1", "APIVersion": "6.1.1"},
    }
    f = podman_facts.from_service(info)
    assert (f.version_text, f.api_version) == ("6.1.1", "6.1.1")
    assert f.cgroup_controllers == frozenset({"memory", "pids"})
    assert (f.storage_driver, f.graph_root, f.run_root) == ("overlay", "/g", "/r")


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("none", {"netns": {"nsmode": "none"}}),
        ("host", {"netns": {"nsmode": "host"}}),
        ("pasta", {"netns": {"nsmode": "pasta"}}),
        ("slirp4netns:allow_host_loopback=true",
         {"netns": {"nsmode": "slirp4netns", "value": "allow_host_loopback=true"}}),
        ("ns:/run/netns/x", {"netns": {"nsmode": "path", "value": "/run/netns/x"}}),
        ("mynet", {"netns": {"nsmode": "bridge"}, "networks": {"mynet": {}}}),
    ],
)  # fmt: skip
def test_network_names_become_libpod_namespaces_or_networks(name: str, fields: dict) -> None:
    """Namespace modes go to netns; any other name is a Podman network joined in bridge mode."""
    assert libpod.network(name) == fields
