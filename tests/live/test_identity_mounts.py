"""Ownership, identity, mounts and SELinux options, live through ``miniwdl run``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from .conftest import (
    BASE_IMAGE,
    Miniwdl,
    RunResult,
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


# a file name made of every byte but NUL and "/" (254 bytes: NAME_MAX is 255); and the same
# bytes backwards, for a Directory input beside it (miniwdl gives a file and a directory of the
# same name the same container path)
EVERY_BYTE = os.fsdecode(bytes(b for b in range(1, 256) if b != 0x2F))
EVERY_BYTE_BACKWARDS = os.fsdecode(bytes(b for b in range(255, 0, -1) if b != 0x2F))

# no indentation: the name's own newlines must not change how the command is dedented, and the
# here-documents carry the paths byte for byte (no quoting can: the name holds every quote)
EVERY_BYTE_WDL = """
version 1.2
task t {
input {
File f
Directory d
String image
}
command <<<
set -euo pipefail
f=$(cat <<'MWP_END_OF_PATH'
~{f}
MWP_END_OF_PATH
)
d=$(cat <<'MWP_END_OF_PATH'
~{d}
MWP_END_OF_PATH
)
printf %s "$f" | od -An -v -tx1 | tr -d ' \n'; echo
printf %s "$d" | od -An -v -tx1 | tr -d ' \n'; echo
[ -f "$f" ] && [ ! -L "$f" ] && echo "f regular"
[ -d "$d" ] && [ ! -L "$d" ] && echo "d directory"
cat -- "$f"
for x in "$d"/*; do printf %s "${x##*/}" | od -An -v -tx1 | tr -d ' \n'; echo; cat -- "$x"; done
if (echo tampered >> "$f") 2>/dev/null; then echo "f writable"; else echo "f read-only"; fi
if (: > "$d/new") 2>/dev/null; then echo "d writable"; else echo "d read-only"; fi
pwd | od -An -v -tx1 | tr -d ' \n'; echo
>>>
output { Array[String] report = read_lines(stdout()) }
requirements { container: image }
}
"""


def every_byte_inputs(tmp_path: Path) -> Tuple[Path, Path, Path]:
    """(a file, a Directory holding a file, a run directory), each path holding a name made of
    every byte but NUL and "/"."""
    top = tmp_path / EVERY_BYTE
    top.mkdir()
    f = top / EVERY_BYTE
    f.write_bytes(b"file\n")
    d = tmp_path / "dirs" / EVERY_BYTE_BACKWARDS
    d.mkdir(parents=True)
    (d / EVERY_BYTE).write_bytes(b"inner\n")
    return f, d, tmp_path / "runs" / EVERY_BYTE / "run"


def check_every_byte_run(res: RunResult, run_dir: Path) -> None:
    """The task saw each input at its exact path, as a regular file / real directory,
    read-only, and nothing staged for it is left in the run directory."""
    assert res.returncode == 0, res.stderr[-3000:]
    name = os.fsencode(EVERY_BYTE).hex()
    report = res.outputs["t.report"]
    assert report[0].endswith("2f" + name), report[0]  # the container path ends in the name
    assert report[1].endswith("2f" + os.fsencode(EVERY_BYTE_BACKWARDS).hex()), report[1]
    assert report[2:8] == ["f regular", "d directory", "file", name, "inner", "f read-only"]
    assert report[8] == "d read-only"
    names = (EVERY_BYTE, EVERY_BYTE_BACKWARDS)
    staged = [p for p in run_dir.rglob("*") if "_miniwdl_inputs" in str(p) and p.name in names]
    assert staged == [], "what was staged for the task is left in its work dir"


def test_names_with_every_byte_work_read_only_and_unchanged(
    miniwdl: Miniwdl, tmp_path: Path
) -> None:
    """Inputs named with every byte from 1 to 255 but "/", a Directory input so named holding
    a file so named, all in a run directory whose path holds such a name: the task sees each at
    the exact path miniwdl gave it (a regular file, a real directory), read-only, and nothing
    is changed. (Through miniwdl's runtime API: `miniwdl run` itself fails on a command line
    that is not UTF-8, see conftest.API_RUNNER.)"""
    f, d, run_dir = every_byte_inputs(tmp_path)
    before = snapshot([f.parent, d])
    inputs = {"f": str(f), "d": str(d), "image": BASE_IMAGE}
    res = miniwdl.run_api(EVERY_BYTE_WDL, inputs, run_dir)
    check_every_byte_run(res, run_dir)
    assert snapshot([f.parent, d]) == before


def test_every_byte_inputs_through_the_miniwdl_command_line(
    miniwdl: Miniwdl, tmp_path: Path
) -> None:
    """The same inputs given to `miniwdl run` in an inputs file (-i, where JSON carries any
    byte as an escape) run the same way."""
    f, d, _run_dir = every_byte_inputs(tmp_path)
    before = snapshot([f.parent, d])
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"f": str(f), "d": str(d), "image": BASE_IMAGE}))
    res = miniwdl.run(EVERY_BYTE_WDL, args=["-i", str(inputs)])
    check_every_byte_run(res, res.run_dir)
    assert snapshot([f.parent, d]) == before


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
