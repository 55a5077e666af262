"""Hard-limit enforcement, the create request's limits and GPUs, OOM messages, CDI discovery."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest

from miniwdl_podman import exits, gpu, identity, libpod, mounts, plan, podman_facts, settings, spec
from miniwdl_podman.errors import ConfigError


def _info(version: str, controllers: List[str], rootless: bool = True) -> Any:
    info: Dict[str, Any] = {
        "host": {
            "cgroupVersion": version,
            "cgroupControllers": controllers,
            "security": {"rootless": rootless},
        },
        "version": {"Version": "5.4.2"},
    }
    return podman_facts.from_service(info)


def test_cgroup_v1_rootless_enforces_nothing_and_says_how_to_fix() -> None:
    """Rootless on cgroup v1: no limits, the reason names v1 and the fix names cgroup v2."""
    enf = podman_facts.enforcement(_info("v1", []))
    assert (enf.cpu, enf.memory) == (False, False)
    assert "cgroup v1" in enf.why_not
    assert "systemd.unified_cgroup_hierarchy=1" in enf.fix
    assert plan.hard_limits(enf, 4, 1 << 30) == ({}, ["cpu", "memory"])


def test_cgroup_v2_with_delegated_controllers_enforces_both() -> None:
    """cpu and memory delegated: both limits asked for, as given."""
    enf = podman_facts.enforcement(_info("v2", ["cpuset", "cpu", "io", "memory", "pids"]))
    assert (enf.cpu, enf.memory) == (True, True)
    assert plan.hard_limits(enf, 3, 2 << 30) == ({"cpu": 3, "memory_bytes": 2 << 30}, [])
    assert plan.hard_limits(enf, 0, 0) == ({}, [])


def test_cgroup_v2_without_cpu_controller_asks_only_for_memory() -> None:
    """An undelegated controller is never asked for (Podman would fail the container)."""
    enf = podman_facts.enforcement(_info("v2", ["memory", "pids"]))
    assert (enf.cpu, enf.memory) == (False, True)
    assert "cpu controller" in enf.why_not
    assert "Delegate=" in enf.fix
    assert plan.hard_limits(enf, 2, 100) == ({"memory_bytes": 100}, ["cpu"])


def test_limits_render_to_libpod_resource_limits() -> None:
    """period/quota and the memory limit reach libpod's resource_limits; devices pass through."""
    paths = mounts.TaskPaths("/c", "/r/work", "/r/o", "/r/e", "/r/cmd")
    task = plan.TaskPlan(
        run_id="r",
        task_dir="/r",
        try_counter=1,
        container_dir="/c",
        mounts=mounts.task_mounts(paths, {}),
        limits={"cpu": 2, "memory_bytes": 1 << 30},
        network="none",
    )
    s = spec.build(
        task,
        settings=settings.Settings(),
        image="img",
        identity=identity.Identity(userns=""),
        devices=["nvidia.com/gpu=all"],
    )
    p = libpod.create_body(s)
    assert p["resource_limits"]["cpu"]["quota"] == 200_000
    assert p["resource_limits"]["cpu"]["period"] == 100_000
    assert p["resource_limits"]["memory"]["limit"] == 1 << 30
    assert p["devices"] == [{"path": "nvidia.com/gpu=all"}]
    assert p["netns"] == {"nsmode": "none"}


@pytest.mark.parametrize(
    ("code", "oom", "limit", "enforced", "needles"),
    [
        (137, True, 1 << 30, True, ["ran out of memory", "limit of 1.0 GiB", "multiplier"]),
        (137, False, 1 << 30, True, ["ran out of memory", "limit of 1.0 GiB"]),
        (137, False, 0, False, ["SIGKILL (exit status 137)", "no memory limit is enforced"]),
        (1, True, 0, False, ["ran out of memory", "the host's memory"]),
    ],
)
def test_killed_tasks_are_explained_with_the_memory_asked(
    code: int, oom: bool, limit: int, enforced: bool, needles: List[str]
) -> None:
    """OOMKilled or exit 137: a message with runtime.memory, the limit if any, and the fix."""
    msg = exits.explain_kill(code, oom, exits.MemoryContext(512 << 20, limit, enforced))
    assert msg is not None
    assert "runtime.memory 512.0 MiB" in msg
    for needle in needles:
        assert needle in msg


def test_ordinary_failures_are_not_called_oom() -> None:
    """Exit codes other than 137, without OOMKilled, get no memory explanation."""
    assert exits.explain_kill(1, False, exits.MemoryContext(1 << 30, 1 << 30, True)) is None
    assert exits.explain_kill(143, False, exits.MemoryContext(0)) is None


def test_cdi_kinds_from_yaml_and_json(tmp_path: Path) -> None:
    """Kinds are read from .yaml and .json spec files; other files and missing dirs are ignored."""
    (tmp_path / "nvidia.yaml").write_text('cdiVersion: "0.5.0"\nkind: nvidia.com/gpu\n')
    (tmp_path / "fake.json").write_text('{"cdiVersion": "0.5.0", "kind": "example.com/fake"}')
    (tmp_path / "notes.txt").write_text("kind: not.this/one\n")
    kinds = gpu.cdi_kinds([str(tmp_path), str(tmp_path / "missing")])
    assert set(kinds) == {"nvidia.com/gpu", "example.com/fake"}
    assert gpu.missing_cdi_devices(
        ["nvidia.com/gpu=all", "example.com/fake=0", "amd.com/gpu=0"], [str(tmp_path)]
    ) == ["amd.com/gpu=0"]
    assert gpu.missing_cdi_devices(["nvidia.com/gpu=all"], [str(tmp_path / "x")]) == [
        "nvidia.com/gpu=all"
    ]


def test_list_options_parse_and_validate() -> None:
    """JSON list options parse, a bare value is a list of one (as miniwdl's get_list); a
    malformed list names the option and the expected form."""
    s = settings.from_mapping(
        {"allow_networks": '["none", "lab"]', "gpu_devices": '["amd.com/gpu=0"]'}
    )
    assert s.allow_networks == ("none", "lab")
    assert s.gpu_devices == ("amd.com/gpu=0",)
    assert settings.from_mapping({"cdi_spec_dirs": "/etc/cdi"}).cdi_spec_dirs == ("/etc/cdi",)
    for bad in ('["/etc/cdi"', "[1, 2]"):
        with pytest.raises(ConfigError) as info:
            settings.from_mapping({"cdi_spec_dirs": bad})
        assert "JSON list of strings" in str(info.value)
        assert "MINIWDL__PODMAN_ROOTLESS__CDI_SPEC_DIRS" in str(info.value)
