"""Mount planning and the ContainerSpec, down to the JSON of libpod's create request."""

from __future__ import annotations

import pytest
from WDL import Error

from miniwdl_podman import identity, libpod, mounts, settings, spec

CDIR = "/mnt/miniwdl_task_container"
PATHS = mounts.TaskPaths(
    container_dir=CDIR,
    host_work_dir="/runs/t/work",
    host_stdout="/runs/t/stdout.txt",
    host_stderr="/runs/t/stderr.txt",
    host_command="/runs/t/command",
)
INPUTS = {
    "/data/x/a:b,c d.txt": f"{CDIR}/work/_miniwdl_inputs/0/a:b,c d.txt",
    "/data/dir/": f"{CDIR}/work/_miniwdl_inputs/0/dir/",
    "/data/dir/inner.txt": f"{CDIR}/work/_miniwdl_inputs/0/dir/inner.txt",
}


def test_plan_mounts_io_rw_inputs_ro_parents_first() -> None:
    """Work dir and std streams are read-write, command and inputs read-only, parents first."""
    plan = mounts.task_mounts(PATHS, INPUTS)
    by_target = {m.target: m for m in plan}
    assert not by_target[f"{CDIR}/work"].read_only
    assert not by_target[f"{CDIR}/stdout.txt"].read_only
    assert not by_target[f"{CDIR}/stderr.txt"].read_only
    assert by_target[f"{CDIR}/command"].read_only
    inputs = [m for m in plan if "_miniwdl_inputs" in m.target]
    assert all(m.read_only for m in inputs)
    assert [m.target for m in inputs] == sorted(m.target for m in inputs)
    assert by_target[f"{CDIR}/work/_miniwdl_inputs/0/dir"].source == "/data/dir"


def test_plan_without_bound_inputs_when_copied() -> None:
    """With copy_input_files, only the four task mounts remain."""
    assert len(mounts.task_mounts(PATHS, INPUTS, bind_inputs=False)) == 4


@pytest.mark.parametrize("bad", ["/data/new\nline", "/data/nul\0byte", "/data/\udcff"])
def test_unmountable_paths_refused_naming_them(bad: str) -> None:
    """A path with a newline, NUL or non-UTF-8 byte is refused before any container starts."""
    with pytest.raises(Error.InputError) as info:
        mounts.task_mounts(PATHS, {bad: f"{CDIR}/work/_miniwdl_inputs/0/x"})
    assert repr(bad) in str(info.value)


def _spec(**overrides: object) -> spec.ContainerSpec:
    s = settings.from_mapping({k: str(v) for k, v in overrides.items()})
    return spec.build(
        settings=s,
        run_id="call-x-0",
        task_dir="/runs/t",
        try_counter=1,
        image="sha256:abc",
        container_dir=CDIR,
        mounts=mounts.task_mounts(PATHS, INPUTS),
        identity=identity.Identity(userns=""),
        env={"FOO": "bar baz"},
    )


def test_spec_renders_to_the_payload_libpod_expects() -> None:
    """Mounts carry ["ro"] options, root images keep the default userns, env/labels pass, init."""
    payload = libpod.create_body(_spec())
    mounts_by_dest = {m["destination"]: m for m in payload["mounts"]}
    assert mounts_by_dest[f"{CDIR}/command"]["options"] == ["ro"]
    assert mounts_by_dest[f"{CDIR}/work"]["options"] == []
    assert mounts_by_dest[f"{CDIR}/work/_miniwdl_inputs/0/a:b,c d.txt"]["source"] == (
        "/data/x/a:b,c d.txt"
    )
    assert "userns" not in payload
    assert payload.get("user") is None
    assert payload["env"] == {"FOO": "bar baz"}
    assert payload["init"] is True
    assert payload["work_dir"] == f"{CDIR}/work"
    assert payload["labels"][spec.LABEL_TASK_DIR] == "/runs/t"
    assert payload["labels"][spec.LABEL_RUN] == "call-x-0"
    assert "netns" not in payload
    assert payload["command"] == [
        "/bin/sh",
        "-c",
        "/bin/bash ../command >> ../stdout.txt 2>> ../stderr.txt",
    ]


def test_network_none_sets_netns() -> None:
    """network = none becomes netns {"nsmode": "none"}."""
    payload = libpod.create_body(_spec(network="none"))
    assert payload["netns"] == {"nsmode": "none"}


def test_container_names_are_unique_and_safe() -> None:
    """Names keep the run id readable, replace unsafe characters and never repeat."""
    a = spec.container_name("call-greet-0-Al ice/x", 2)
    b = spec.container_name("call-greet-0-Al ice/x", 2)
    assert a != b
    assert a.startswith("miniwdl-call-greet-0-Al-ice-x-2-")
    assert all(c.isalnum() or c in "_.-" for c in a)
