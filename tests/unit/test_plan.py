"""The task plan: what a task attempt's container is decided to be, from runtime values alone."""

from __future__ import annotations

from typing import Any, Dict

from miniwdl_podman import mounts, plan, settings

PATHS = mounts.TaskPaths("/mnt/c", "/r/work", "/r/stdout.txt", "/r/stderr.txt", "/r/command")


def _plan(runtime_values: Dict[str, Any], **kw: Any) -> plan.TaskPlan:
    args: Dict[str, Any] = {
        "run_id": "call-t",
        "task_dir": "/r",
        "try_counter": 2,
        "paths": PATHS,
        "input_path_map": {"/in/x.txt": "/mnt/c/work/_miniwdl_inputs/0/x.txt"},
        "bind_inputs": True,
        "runtime_values": runtime_values,
        "default_image": "ubuntu:22.04",
        "settings": settings.Settings(),
        "network": "",
        "limits": {},
    }
    args.update(kw)
    return plan.task_plan(**args)


def test_plan_takes_image_env_gpu_and_privileges_from_runtime_values() -> None:
    """runtime.docker, env, gpu and privileged land in the plan; writable paths are the task's."""
    p = _plan({"docker": "quay.io/x/y:1", "env": {"A": 1}, "gpu": True, "privileged": True})
    assert (p.image, p.inline_dockerfile, p.env) == ("quay.io/x/y:1", "", {"A": "1"})
    assert p.gpu and p.privileged and p.try_counter == 2
    assert p.writable == ["/r/work", "/r/stdout.txt", "/r/stderr.txt"]
    assert [m.target for m in p.mounts][-1] == "/mnt/c/work/_miniwdl_inputs/0/x.txt"


def test_plan_uses_the_default_image_or_the_inline_dockerfile() -> None:
    """No runtime.docker: [task_runtime] defaults' image; an inline Dockerfile: no image name."""
    assert _plan({}).image == "ubuntu:22.04"
    inline = _plan({"inlineDockerfile": "FROM x\n"})
    assert (inline.image, inline.inline_dockerfile) == ("", "FROM x\n")
    assert inline.image_label == "runtime.inlineDockerfile"


def test_plan_relabels_only_what_the_backend_owns_and_copies_skip_input_mounts() -> None:
    """selinux = private relabels the backend's mounts with Z, never inputs; copied inputs
    (copy_input_files) are not mounted."""
    p = _plan({}, settings=settings.Settings(selinux="private"))
    assert p.security_opt == []
    labels = {m.target: m.relabel for m in p.mounts}
    assert labels["/mnt/c/work"] == "Z" and labels["/mnt/c/work/_miniwdl_inputs/0/x.txt"] is None
    assert len(_plan({}, bind_inputs=False).mounts) == 4


def test_docker_network_applies_only_when_allowed() -> None:
    """runtime.docker_network is taken if listed in allow_networks, else a warning and the
    configured network."""
    s = settings.Settings(network="none", allow_networks=("pasta",))
    assert plan.task_network("pasta", s) == ("pasta", None)
    assert plan.task_network(None, s) == ("none", None)
    network, warning = plan.task_network("host", s)
    assert network == "none" and warning and "allow_networks" in warning


def test_plan_survives_json() -> None:
    """The plan the Slurm backend writes is the plan the node reads back."""
    p = _plan({"docker": "img", "env": {"K": "v"}}, limits={"cpu": 2}, network="none")
    assert plan.TaskPlan.from_json(p.to_json()) == p
