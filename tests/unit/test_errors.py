"""Known Podman failure texts map to the fix users need."""

from __future__ import annotations

import pytest

from miniwdl_podman.errors import GENERIC_HINT, hint_for


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ("crun: cgroups in hybrid mode not supported, drop all controllers", 'runtime = "runc"'),
        ("slirp4netns failed: open(/dev/net/tun): Permission denied", "network = none"),
        ("cannot find newuidmap: exec: not found", "uidmap package"),
        (
            "keep-id requires additional UIDs or GIDs defined in /etc/subuid",
            "usermod --add-subuids",
        ),
        ("writing blob: no space left on device", "podman system prune"),
        ("statfs /mnt/nfs/run/stdout.txt: no such file or directory", "podman system migrate"),
        ("runc create failed: unable to setup user: invalid argument", "usermod --add-subuids"),
    ],
)
def test_known_failures_get_their_fix(message: str, needle: str) -> None:
    """Each known Podman failure text gets a hint naming the concrete fix."""
    assert needle in hint_for(message)


def test_unknown_failure_gets_generic_advice() -> None:
    """An unknown message gets the generic advice, never an empty hint."""
    assert hint_for("something new went wrong") == GENERIC_HINT


def test_podman6_network_and_cgroup_refusals_name_the_fix() -> None:
    """Podman 6's answers to slirp4netns and to a cgroup v1 host point at pasta and cgroup v2,
    never back at slirp4netns or /dev/net/tun."""
    for message in ('invalid config provided: invalid network "slirp4netns"',
                    '"slirp4netns" support has been removed, use --network=pasta'):  # fmt: skip
        hint = hint_for(message)
        assert "network to pasta" in hint and "/dev/net/tun" not in hint
    assert "cgroup v2" in hint_for('level=fatal msg="Cgroups v1 not supported"')
