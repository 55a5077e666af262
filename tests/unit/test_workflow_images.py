"""Finding the images a WDL workflow may use before it runs (no Podman needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import WDL
from WDL import CLI

from miniwdl_podman import workflow_images

MAIN = """
version 1.1
import "sub.wdl" as sub

workflow w {
    input {
        String image
        String other = "registry.example/other:2"
        Array[String] tags = ["x", "y"]
    }
    call t as given { input: image = image }
    call t as defaulted { input: image = other }
    call t as computed { input: image = "registry.example/made:" + length(tags) }
    call listed
    call plain
    call inline
    scatter (tag in tags) {
        call t as per_tag { input: image = "registry.example/tagged:" + tag }
    }
    call sub.s { input: image = other }
}

task t {
    input { String image }
    command <<< true >>>
    runtime { docker: image }
}

task listed {
    command <<< true >>>
    runtime { container: ["registry.example/first:1", "registry.example/second:1"] }
}

task plain {
    command <<< true >>>
}

task inline {
    command <<< true >>>
    runtime { inlineDockerfile: ["FROM registry.example/base:1", "RUN true"] }
}
"""

SUB = """
version 1.1
workflow s {
    input { String image }
    call u { input: img = image }
}
task u {
    input { String img }
    command <<< true >>>
    runtime { docker: img + "-sub" }
}
"""


def _find(tmp_path: Path, inputs: List[str], default_image: str) -> Dict[str, Any]:
    (tmp_path / "main.wdl").write_text(MAIN)
    (tmp_path / "sub.wdl").write_text(SUB)
    doc = WDL.load(str(tmp_path / "main.wdl"))
    target, env, _json = CLI.runner_input(doc, inputs, None, [], [], check_required=False)
    uses = workflow_images.find(target, env, default_image)
    return {u.where: u for u in uses}


def test_images_are_found_as_miniwdl_would_decide_them(tmp_path: Path) -> None:
    """Given inputs, defaults, computed call inputs, a container list (its first), the
    [task_runtime] default, an inline Dockerfile and a sub-workflow's task are all found."""
    found = _find(tmp_path, ["image=registry.example/given:1"], "site/default:3")
    assert found["call w.given (task t)"].image == "registry.example/given:1"
    assert found["call w.defaulted (task t)"].image == "registry.example/other:2"
    assert found["call w.computed (task t)"].image == "registry.example/made:2"
    assert found["call w.listed (task listed)"].image == "registry.example/first:1"
    assert found["call w.plain (task plain)"].image == "site/default:3"
    inline = found["call w.inline (task inline)"]
    assert inline.dockerfile == "FROM registry.example/base:1\nRUN true"
    assert found["call w.s.u (task u)"].image == "registry.example/other:2-sub"


def test_an_image_only_the_run_can_know_is_reported_not_guessed(tmp_path: Path) -> None:
    """A scatter element's image, and one whose input was not given, come back as unknown with
    the reason; a task without an image gets the default image given."""
    found = _find(tmp_path, ["other=registry.example/o:9"], "ubuntu:22.04")
    per_tag = found["call w.per_tag (task t)"]
    assert per_tag.image == "" and "known only at run time" in per_tag.unknown
    assert "(it depends on image)" in per_tag.unknown
    assert "known only at run time" in found["call w.given (task t)"].unknown
    assert found["call w.plain (task plain)"].image == "ubuntu:22.04"
    assert found["call w.s.u (task u)"].image == "registry.example/o:9-sub"


def test_a_runtime_override_among_the_inputs_wins(tmp_path: Path) -> None:
    """``CALL.runtime.docker=IMAGE`` on the command line replaces the task's own image."""
    found = _find(
        tmp_path,
        ["image=registry.example/given:1", "given.runtime.docker=registry.example/over:1"],
        "ubuntu:22.04",
    )
    assert found["call w.given (task t)"].image == "registry.example/over:1"
    assert found["call w.defaulted (task t)"].image == "registry.example/other:2"
