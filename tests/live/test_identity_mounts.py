"""Ownership, identity, mounts and SELinux options, live through ``miniwdl run``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from .conftest import (
    BASE_IMAGE,
    Miniwdl,
    containers_under,
    foreign_owned,
    podman,
    snapshot,
)

pytestmark = pytest.mark.podman

IMAGES = {
    # image: (expected uid inside, expected gid inside, expected HOME)
    BASE_IMAGE: (0, 0, "/root"),
    "localhost/miniwdl-podman/user-app:2": (1500, 1600, "/home/app"),
    "localhost/miniwdl-podman/user-1000:2": (1000, 1000, "/home/miniwdl"),
    "localhost/miniwdl-podman/user-nobody:2": (65534, 65534, "/nonexistent"),
}

WRITER_WDL = """
version 1.2
task writer {
    input { String image }
    command <<<
        set -euo pipefail
        id -u > uid; id -g > gid; echo "$HOME" > home
        mkdir -p "$HOME/.cache/tool" dir/sub
        echo secret > "$HOME/.dotfile"
        echo cached > "$HOME/.cache/tool/c.txt"
        cp -r "$HOME/.dotfile" "$HOME/.cache" dir/
        echo data > dir/sub/f.txt
        echo hidden > .hidden_in_workdir
        ln -s sub/f.txt dir/link
    >>>
    output {
        Int uid = read_int("uid")
        Int gid = read_int("gid")
        String home = read_string("home")
        Directory d = "dir"
        File hidden = ".hidden_in_workdir"
    }
    requirements { container: image }
}
"""


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_file_is_owned_by_invoking_user_whatever_the_image_user(
    miniwdl: Miniwdl, image: str
) -> None:
    """Root, named, numeric and nobody images: the task runs as the image's user inside, can
    write its HOME, and every file it leaves is owned by the invoking user."""
    res = miniwdl.run(WRITER_WDL, f"image={image}", args=["--verbose"])
    assert res.returncode == 0, res.stderr[-3000:]
    uid, gid, home = IMAGES[image]
    out = res.outputs
    assert (out["writer.uid"], out["writer.gid"], out["writer.home"]) == (uid, gid, home)
    d = Path(out["writer.d"])
    assert (d / ".dotfile").read_text() == "secret\n"
    assert (d / ".cache" / "tool" / "c.txt").read_text() == "cached\n"
    assert (d / "sub" / "f.txt").read_text() == "data\n"
    assert os.readlink(d / "link") == "sub/f.txt"
    assert foreign_owned(res.run_dir) == []
    assert "gave them back" not in res.log()


def test_as_user_runs_as_invoking_uid_inside(miniwdl: Miniwdl) -> None:
    """[task_runtime] as_user = true runs even a USER image as the invoking uid:gid inside."""
    res = miniwdl.run(
        WRITER_WDL,
        "image=localhost/miniwdl-podman/user-app:2",
        env={"MINIWDL__TASK_RUNTIME__AS_USER": "true"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (res.outputs["writer.uid"], res.outputs["writer.gid"]) == (os.getuid(), os.getgid())
    assert foreign_owned(res.run_dir) == []


CHOWNER_WDL = """
version 1.0
task chowner {
    input { String image }
    command <<<
        set -euo pipefail
        mkdir -p tree/deep
        echo a > tree/a.txt
        echo b > tree/deep/b.txt
        chown -R 1234:5678 tree
        chown 42:42 ../stdout.txt
        ln -s a.txt tree/ln && chown -h 7:7 tree/ln
    >>>
    output { Array[File] files = ["tree/a.txt", "tree/deep/b.txt"] }
    runtime { docker: image }
}
"""


def test_files_given_to_other_uids_are_given_back(miniwdl: Miniwdl) -> None:
    """Files a root task chowns to other uids are chowned back to the user, with a warning."""
    res = miniwdl.run(CHOWNER_WDL, f"image={BASE_IMAGE}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert foreign_owned(res.run_dir) == []
    assert "gave them back to you" in res.log()
    assert [Path(p).read_text() for p in res.outputs["chowner.files"]] == ["a\n", "b\n"]


def test_chown_false_still_gives_files_back(miniwdl: Miniwdl) -> None:
    """[file_io] chown = false does not leave foreign files (miniwdl could not finish the run)."""
    res = miniwdl.run(CHOWNER_WDL, f"image={BASE_IMAGE}", env={"MINIWDL__FILE_IO__CHOWN": "false"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert foreign_owned(res.run_dir) == []
    assert "gave them back to you" in res.log()


def _xattr_snapshot(paths: List[Path]) -> Dict[str, Any]:
    ans = snapshot(paths)
    for p in paths:
        ans[f"{p}#xattrs"] = {k: os.getxattr(p, k) for k in os.listxattr(p)}
    return ans


def test_inputs_read_only_and_unchanged_after_success_and_failure(
    miniwdl: Miniwdl, tmp_path: Path
) -> None:
    """Writing to an input fails the task; inputs keep bytes, mode, owner, mtime and xattrs."""
    data = tmp_path / "shared"
    data.mkdir()
    f = data / "ref.txt"
    f.write_text("reference\n")
    d = data / "refdir"
    d.mkdir()
    (d / "x").write_text("x\n")
    os.setxattr(f, "user.origin", b"lab")
    before = _xattr_snapshot([f, d, d / "x"])
    wdl = """
version 1.2
task t {
    input {
        File f
        Directory d
        String image
        Boolean vandal
    }
    command <<<
        set -u
        cat "~{f}" > copy.txt
        if ~{vandal}; then
            echo tampered > "~{f}" || echo "write to File refused" >&2
            rm -f "~{d}/x" || echo "rm in Directory refused" >&2
            touch "~{d}/new" || echo "create in Directory refused" >&2
            exit 7
        fi
    >>>
    output { File copy = "copy.txt" }
    requirements { container: image }
}
"""
    ok = miniwdl.run(wdl, f"f={f}", f"d={d}", f"image={BASE_IMAGE}", "vandal=false")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert Path(ok.outputs["t.copy"]).read_text() == "reference\n"
    assert _xattr_snapshot([f, d, d / "x"]) == before
    bad = miniwdl.run(wdl, f"f={f}", f"d={d}", f"image={BASE_IMAGE}", "vandal=true")
    assert bad.returncode != 0
    assert bad.error is not None and bad.error["cause"]["exit_status"] == 7
    stderr = Path(bad.error["cause"]["stderr_file"]).read_text()
    assert "write to File refused" in stderr
    assert "rm in Directory refused" in stderr
    assert "create in Directory refused" in stderr
    assert _xattr_snapshot([f, d, d / "x"]) == before


def test_symlinked_hardlinked_sibling_and_nested_inputs(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """Inputs that are symlinks, hard links, siblings, and a file inside an input Directory."""
    data = tmp_path / "in"
    (data / "dir" / "sub").mkdir(parents=True)
    real = data / "real.txt"
    real.write_text("real\n")
    (data / "sym.txt").symlink_to(real)
    os.link(real, data / "hard.txt")
    (data / "sibling.txt").write_text("sibling\n")
    nested = data / "dir" / "sub" / "nested.txt"
    nested.write_text("nested\n")
    before = snapshot([data])
    wdl = """
version 1.2
task t {
    input {
        Array[File] files
        Directory dir
        File inner
        String image
    }
    command <<<
        set -euo pipefail
        cat ~{sep(" ", files)} > cat.txt
        cat "~{inner}" > inner.txt
        cat "~{dir}/sub/nested.txt" > via_dir.txt
    >>>
    output {
        String all = read_string("cat.txt")
        String inner_text = read_string("inner.txt")
        String via_dir = read_string("via_dir.txt")
    }
    requirements { container: image }
}
"""
    res = miniwdl.run(
        wdl,
        f"files={data / 'sym.txt'}",
        f"files={data / 'hard.txt'}",
        f"files={data / 'sibling.txt'}",
        f"files={real}",
        f"dir={data / 'dir'}",
        f"inner={nested}",
        f"image={BASE_IMAGE}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["t.all"] == "real\nreal\nsibling\nreal"
    assert res.outputs["t.inner_text"] == "nested"
    assert res.outputs["t.via_dir"] == "nested"
    assert snapshot([data]) == before


def test_path_with_newline_is_refused_before_any_container(
    miniwdl: Miniwdl, tmp_path: Path
) -> None:
    """An input whose path has a newline fails with one line naming it; no container is made."""
    weird = tmp_path / "bad\nname.txt"
    weird.write_text("x")
    wdl = """
version 1.0
task t {
    input {
        File f
        String image
    }
    command <<< cat "~{f}" >>>
    runtime { docker: image }
}
"""
    res = miniwdl.run(wdl, f"f={weird}", f"image={BASE_IMAGE}", args=["--verbose"])
    assert "path cannot be mounted into a Podman container" in res.clean_failure_line()
    assert "podman container created" not in res.log()


@pytest.mark.parametrize(
    ("mode", "selinux_opts", "owned"),
    [("disable", ["disable"], []), ("shared", None, ["z"]), ("private", None, ["Z"])],
)
def test_container_is_created_with_each_selinux_mode(
    miniwdl: Miniwdl, tmp_path: Path, mode: str, selinux_opts: Any, owned: List[str]
) -> None:
    """Each selinux mode: Podman accepts the create request carrying its options (libpod's
    'disable' spelling; z/Z on the backend's own mounts only, never on inputs) and the task runs;
    where SELinux is enabled, the running container is inspected for them too."""
    src = tmp_path / "input.txt"
    src.write_text("x\n")
    wdl = """
version 1.0
task t {
    input {
        File f
        String image
    }
    command <<< sleep 2; cat "~{f}" >>>
    output { String out = read_string(stdout()) }
    runtime { docker: image }
}
"""
    proc, run_dir = miniwdl.start(
        wdl,
        f"f={src}",
        f"image={BASE_IMAGE}",
        env={"MINIWDL__PODMAN_ROOTLESS__SELINUX": mode},
        args=["--debug"],
        capture=False,
    )
    try:
        deadline = time.monotonic() + 30
        names: List[str] = []
        while not names and time.monotonic() < deadline:
            names = containers_under(tmp_path)
            time.sleep(0.1)
        assert names, "task container never appeared"
        attrs = json.loads(podman("inspect", names[0]).stdout)[0]
    finally:
        assert proc.wait(60) == 0
    log = next(run_dir.glob("*/task.log")).read_text()
    line = next(ln for ln in log.splitlines() if "podman create request" in ln)
    decoder = json.JSONDecoder()
    request = {
        key: decoder.raw_decode(line, line.index(f" {key}: ") + len(key) + 3)[0]
        for key in ("selinux_opts", "mounts")
    }
    assert request["selinux_opts"] == selinux_opts
    by_dest = {m["destination"]: m["options"] for m in request["mounts"]}
    assert by_dest["/mnt/miniwdl_task_container/work"] == owned
    assert by_dest["/mnt/miniwdl_task_container/stdout.txt"] == owned
    (input_options,) = [o for d, o in by_dest.items() if "_miniwdl_inputs" in d]
    assert input_options == ["ro"]
    selinux_on = podman("info", "--format", "{{.Host.Security.SELinuxEnabled}}").stdout.strip()
    if selinux_on == "true":
        sec = attrs["HostConfig"].get("SecurityOpt") or []
        assert ("label=disable" in sec) == (mode == "disable")


def test_mount_tmpdir_gives_a_writable_tmpdir_in_the_work_dir(miniwdl: Miniwdl) -> None:
    """[file_io] mount_tmpdir: TMPDIR lies in the task's work dir and the task can write it."""
    wdl = """
version 1.0
task t {
    input { String image }
    command <<<
        set -euo pipefail
        echo "$TMPDIR" > tmpdir.txt
        echo scratch > "$TMPDIR/scratch"
        cat "$TMPDIR/scratch"
    >>>
    output {
        String tmpdir = read_string("tmpdir.txt")
        String out = read_string(stdout())
    }
    runtime { docker: image }
}
"""
    res = miniwdl.run(
        wdl,
        "image=localhost/miniwdl-podman/user-app:2",
        env={"MINIWDL__FILE_IO__MOUNT_TMPDIR": "true"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.outputs["t.tmpdir"] == "/mnt/miniwdl_task_container/work/_miniwdl_tmpdir"
    assert res.outputs["t.out"] == "scratch"
    assert foreign_owned(res.run_dir) == []
