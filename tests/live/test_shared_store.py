"""The shared read-only image store (``shared_store``), live: staging by ``miniwdl-podman pull``,
runs that read it with the registry gone, concurrent and killed stagings, a tag that moved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from .conftest import (
    BASE_IMAGE,
    INDEXED_SCATTER_WDL,
    REGISTRY,
    Miniwdl,
    RegistryRelay,
    podman,
    service_processes,
    stop_services_under,
)

pytestmark = pytest.mark.podman

# the test bed's registry behind a relay that the tests start and stop (registries.conf.d
# marks 127.0.0.1:5001 insecure)
RELAYED_IMAGE = "127.0.0.1:5001/miniwdl-podman-test/pullme:2"
STAGE_WDL = """
version 1.0
task t {
    input { String image }
    command <<< true >>>
    runtime { docker: image }
}
"""
ENV = "MINIWDL__PODMAN_ROOTLESS__SHARED_STORE"


def relay() -> RegistryRelay:
    host, _, port = REGISTRY.partition(":")
    return RegistryRelay((host, int(port)))


@pytest.fixture
def shared(short_dir: Path) -> Iterator[Path]:
    """An empty shared store directory; afterwards its stores (files of the user's subordinate
    ids) are removed and the warm services that read them stopped."""
    path = short_dir / "shared"
    yield path
    stop_services_under(path)
    subprocess.run(["podman", "unshare", "rm", "-rf", str(path)], capture_output=True)


def pull_cmd(tmp_path: Path, store: Path, image: str) -> List[str]:
    wdl = tmp_path / "stage.wdl"
    wdl.write_text(STAGE_WDL)
    cfg = tmp_path / "stage.cfg"
    cfg.write_text(f"[podman_rootless]\nshared_store = {store}\n")
    return [sys.executable, "-m", "miniwdl_podman", "pull", str(wdl), f"image={image}",
            "--cfg", str(cfg)]  # fmt: skip


def stage(tmp_path: Path, store: Path, image: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``miniwdl-podman pull`` of one image into the shared store."""
    return subprocess.run(
        pull_cmd(tmp_path, store, image), capture_output=True, text=True, timeout=600,
        env={**os.environ, **env},
    )  # fmt: skip


def staged_images(store: Path) -> Dict[str, Dict[str, object]]:
    """image id → its ``image.json``, for every store made visible."""
    return {
        p.parent.name: json.loads(p.read_text()) for p in (store / "images").glob("*/image.json")
    }


def names_in(image_store: Path) -> List[List[str]]:
    """The names each image has inside one containers-storage root (from its own index)."""
    index = image_store / "overlay-images" / "images.json"
    return [list(i.get("names") or []) for i in json.loads(index.read_text())]


def test_a_staged_image_runs_from_the_shared_store_with_its_registry_gone(
    miniwdl: Miniwdl, shared: Path, tmp_path: Path
) -> None:
    """An image staged by `pull` while its registry answered runs a scatter from the shared
    store after the registry went away and the user's own copy was removed; nothing is pulled
    into the user's store, and the staged copy carries no name (the index holds names)."""
    podman("rmi", "-f", RELAYED_IMAGE, check=False)
    up = relay()
    up.start()
    try:
        res = stage(tmp_path, shared, RELAYED_IMAGE)
    finally:
        up.stop()
    assert res.returncode == 0, res.stderr
    assert f"{RELAYED_IMAGE} → sha256:" in res.stdout and "(shared store)" in res.stdout
    ((image_id, meta),) = staged_images(shared).items()
    assert meta["names"] == [RELAYED_IMAGE] and str(meta["digest"]).startswith("sha256:")
    assert names_in(shared / "images" / image_id / "store") == [[]]
    assert not (shared / "images" / image_id / "store" / "libpod").exists()
    assert list((shared / "staging").iterdir()) == []
    podman("rmi", "-f", RELAYED_IMAGE, check=False)

    run = miniwdl.run(INDEXED_SCATTER_WDL, "n=3", f"image={RELAYED_IMAGE}",
                      env={ENV: str(shared)}, args=["--verbose"])  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.outputs["w.got"] == [0, 1, 2]
    log = run.log()
    assert "a private service reads the shared image stores" in log
    assert f'image in shared store :: image: "{RELAYED_IMAGE}", id: "{image_id[:12]}"' in log
    assert "pulling image" not in log
    assert podman("image", "exists", RELAYED_IMAGE, check=False).returncode != 0


def test_two_stagings_of_one_image_at_once_make_one_store(shared: Path, tmp_path: Path) -> None:
    """Two `pull`s staging the same image at the same moment both succeed with the same image;
    the shared store ends with one store for it and no staging left over."""
    cmd = pull_cmd(tmp_path, shared, BASE_IMAGE)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _out, err in outs]
    assert outs[0][0] == outs[1][0] and "(shared store)" in outs[0][0]
    assert len(staged_images(shared)) == 1
    assert list((shared / "staging").iterdir()) == []


def test_a_staging_killed_halfway_leaves_the_store_usable(
    miniwdl: Miniwdl, shared: Path, tmp_path: Path, short_dir: Path
) -> None:
    """A `pull` killed (SIGKILL) while its staging service loads the image leaves nothing
    visible; the next staging sweeps the remains (in the store and in the runtime directory)
    and stages the image, and a run uses it."""
    runtime_dir = short_dir / "run"
    runtime_dir.mkdir(mode=0o700)
    env = {"MINIWDL__PODMAN_ROOTLESS__RUNTIME_DIR": str(runtime_dir)}

    def private_dirs() -> List[str]:  # the warm service's stays, by design
        return sorted(
            p.name for p in runtime_dir.iterdir() if not p.name.startswith("miniwdl-podman-warm-")
        )

    proc = subprocess.Popen(
        pull_cmd(tmp_path, shared, BASE_IMAGE), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, **env},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(shared.glob("staging/*/store/overlay*")):
        assert proc.poll() is None, "the staging ended before it could be killed"
        assert time.monotonic() < deadline, "no staging began"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 60
    while service_processes(str(shared)) and time.monotonic() < deadline:
        time.sleep(0.05)  # its staging service stops with it (a pipe ties them)
    assert service_processes(str(shared)) == []
    assert staged_images(shared) == {}
    assert len(list((shared / "staging").iterdir())) == 1
    # the staging service's directory, and its run root
    left = private_dirs()
    assert len(left) == 2 and left[1] == left[0].replace("miniwdl-podman-", "mwp-run-"), left

    res = stage(tmp_path, shared, BASE_IMAGE, **env)
    assert res.returncode == 0, res.stderr
    assert len(staged_images(shared)) == 1
    assert list((shared / "staging").iterdir()) == []
    assert private_dirs() == []
    run = miniwdl.run(INDEXED_SCATTER_WDL, "n=1", f"image={BASE_IMAGE}",
                      env={ENV: str(shared)}, args=["--verbose"])  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "image in shared store" in run.log()


def test_a_tag_that_moved_is_staged_anew_and_never_breaks_the_store(
    miniwdl: Miniwdl, shared: Path, tmp_path: Path
) -> None:
    """A name staged again after its tag moved (pull = always) gets a store of its own and the
    index follows it; the old store stays for runs pinned to it, and a service reading both
    lists them and runs the new image."""
    moving = f"{REGISTRY}/miniwdl-podman-test/moving-{uuid.uuid4().hex[:8]}:1"
    other = "localhost/miniwdl-podman/user-nobody:2"
    try:
        podman("push", "--tls-verify=false", BASE_IMAGE, moving)
        first = stage(tmp_path, shared, moving)
        assert first.returncode == 0, first.stderr
        podman("push", "--tls-verify=false", other, moving)
        again = stage(tmp_path, shared, moving, MINIWDL__PODMAN_ROOTLESS__PULL="always")
        assert again.returncode == 0, again.stderr
    finally:
        podman("rmi", "-f", moving, check=False)
    assert first.stdout != again.stdout
    images = staged_images(shared)
    assert len(images) == 2
    other_id = json.loads(podman("image", "inspect", other).stdout)[0]["Id"]
    assert other_id in images
    run = miniwdl.run(INDEXED_SCATTER_WDL, "n=1", f"image={moving}",
                      env={ENV: str(shared)}, args=["--verbose"])  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert f'image in shared store :: image: "{moving}", id: "{other_id[:12]}"' in run.log()
    opts = [
        a
        for i in images
        for a in ("--storage-opt", f"overlay.imagestore={shared}/images/{i}/store")
    ]
    listed = podman(*opts, "images", "--format", "{{.ID}}").stdout.split()
    assert {i[:12] for i in images} <= set(listed)


def test_a_shared_store_that_cannot_be_written_fails_naming_it(tmp_path: Path) -> None:
    """Staging into a directory the user cannot write fails the image with the path and the
    option to change, no traceback."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    res = stage(tmp_path, locked / "shared", BASE_IMAGE)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "cannot stage image" in res.stderr and str(locked / "shared") in res.stderr
    assert "shared_store elsewhere" in res.stderr
