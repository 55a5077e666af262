"""Mount planning and the ContainerSpec, down to the JSON of libpod's create request."""

from __future__ import annotations

import pytest

from miniwdl_podman import errors, identity, libpod, mounts, plan, settings, spec

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
    planned = mounts.task_mounts(PATHS, INPUTS)
    by_target = {m.target: m for m in planned}
    assert not by_target[f"{CDIR}/work"].read_only
    assert not by_target[f"{CDIR}/stdout.txt"].read_only
    assert not by_target[f"{CDIR}/stderr.txt"].read_only
    assert by_target[f"{CDIR}/command"].read_only
    inputs = [m for m in planned if "_miniwdl_inputs" in m.target]
    assert all(m.read_only for m in inputs)
    assert [m.target for m in inputs] == sorted(m.target for m in inputs)
    assert by_target[f"{CDIR}/work/_miniwdl_inputs/0/dir"].source == "/data/dir"


def test_plan_without_bound_inputs_when_copied() -> None:
    """With copy_input_files, only the four task mounts remain."""
    assert len(mounts.task_mounts(PATHS, INPUTS, bind_inputs=False)) == 4


@pytest.mark.parametrize("name", ["new\nline", "tab\there", "\udcff\udcfe", "\x7f"])
def test_names_the_api_cannot_carry_are_staged_not_refused(name: str) -> None:
    """An input whose own name the API cannot carry is staged: its directory is mounted
    read-only from the work dir, where it will be put under its exact name; its safe siblings
    are mounted on top as usual; a source the API cannot carry is kept (aliased at run time)."""
    assert not mounts.api_safe(name) and mounts.api_safe("a:b,c d é.txt")
    inputs = {
        f"/data/{name}": f"{CDIR}/work/_miniwdl_inputs/0/{name}",
        f"/data/{name}dir/": f"{CDIR}/work/_miniwdl_inputs/0/{name}dir/",
        "/data/ok.txt": f"{CDIR}/work/_miniwdl_inputs/0/ok.txt",
        f"/other/{name}/safe.txt": f"{CDIR}/work/_miniwdl_inputs/1/safe.txt",
    }
    planned = mounts.task_mounts(PATHS, inputs)
    by_target = {m.target: m for m in planned}
    staged_dir = by_target[f"{CDIR}/work/_miniwdl_inputs/0"]
    assert staged_dir.source == "/runs/t/work/_miniwdl_inputs/0" and staged_dir.read_only
    assert by_target[f"{CDIR}/work/_miniwdl_inputs/0/ok.txt"].source == "/data/ok.txt"
    assert by_target[f"{CDIR}/work/_miniwdl_inputs/1/safe.txt"].source == f"/other/{name}/safe.txt"
    assert all(mounts.api_safe(m.target) for m in planned)
    assert [m.target for m in planned[4:]] == sorted(m.target for m in planned[4:])
    assert mounts.staged_inputs(PATHS, inputs) == [
        mounts.Staged(f"/data/{name}", f"/runs/t/work/_miniwdl_inputs/0/{name}", False),
        mounts.Staged(f"/data/{name}dir", f"/runs/t/work/_miniwdl_inputs/0/{name}dir", True),
    ]


def test_libpod_refuses_a_path_the_api_cannot_carry() -> None:
    """A path that was neither staged nor aliased never reaches Podman mangled."""
    with pytest.raises(errors.BackendError) as info:
        libpod.mount(mounts.Mount("/data/\udcff", "/x", True))
    assert "'/data/\\udcff'" in str(info.value)


def _spec(**overrides: object) -> spec.ContainerSpec:
    s = settings.from_mapping({k: str(v) for k, v in overrides.items()})
    task = plan.TaskPlan(
        run_id="call-x-0",
        task_dir="/runs/t",
        try_counter=1,
        container_dir=CDIR,
        mounts=mounts.task_mounts(PATHS, INPUTS),
        env={"FOO": "bar baz"},
        network=s.network,
    )
    return spec.build(task, settings=s, image="sha256:abc", identity=identity.Identity(userns=""))


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
