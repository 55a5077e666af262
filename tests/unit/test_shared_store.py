"""The shared image store's layout rules (no Podman): visibility by rename, the name index,
killed stagings, and the storage options a service reading it is given."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from miniwdl_podman import plan as plan_mod
from miniwdl_podman import protocol, settings
from miniwdl_podman.shared_store import SharedStore, Staged, storage_options

ID_A = "a" * 64
ID_B = "b" * 64


def _stage(store: SharedStore, image_id: str, name: str) -> Staged:
    with store.staging(image_id) as work:
        assert work is not None
        os.makedirs(os.path.join(work, "store", "overlay-images"))
        staged = store.commit(work, image_id, "sha256:" + "d" * 64, [name])
    store.record_name(name, staged)
    return staged


def test_a_staging_is_invisible_until_committed_then_found_by_name_and_id(tmp_path: Path) -> None:
    """A store being staged is neither listed nor found; once committed it is, by id and by
    the name recorded for it, and its staging directory is gone."""
    store = SharedStore(str(tmp_path))
    with store.staging(ID_A) as work:
        assert work is not None and os.path.isdir(work)
        assert store.stores() == [] and store.by_id(ID_A) is None
        staged = store.commit(work, ID_A, "sha256:x", ["r/img:1"])
    assert not os.path.exists(work)
    assert store.stores() == [staged.store] == [str(tmp_path / "images" / ID_A / "store")]
    assert store.by_id(f"sha256:{ID_A}") == staged
    assert store.find("r/img:1") is None  # no name recorded yet
    store.record_name("r/img:1", staged)
    assert store.find("r/img:1") == staged
    assert os.listdir(tmp_path / "staging") == []


def test_an_image_already_staged_is_not_staged_again(tmp_path: Path) -> None:
    """A second staging of an image already there (another run won the race) gets no staging
    directory."""
    store = SharedStore(str(tmp_path))
    _stage(store, ID_A, "r/img:1")
    with store.staging(ID_A) as work:
        assert work is None


def test_a_moved_tag_points_to_the_new_image_and_the_old_store_stays(tmp_path: Path) -> None:
    """Recording a name again replaces its index entry; the store it pointed to stays."""
    store = SharedStore(str(tmp_path))
    old = _stage(store, ID_A, "r/img:1")
    new = _stage(store, ID_B, "r/img:1")
    assert store.find("r/img:1") == new
    assert store.by_id(ID_A) == old and len(store.stores()) == 2


def test_index_entries_that_do_not_match_are_ignored(tmp_path: Path) -> None:
    """An index entry naming a store that is not there, or a file that is not ours, finds
    nothing (never a traceback)."""
    store = SharedStore(str(tmp_path))
    store.record_name("r/img:1", Staged(ID_A, "", ""))
    assert store.find("r/img:1") is None
    (tmp_path / "images" / ID_B).mkdir(parents=True)
    (tmp_path / "images" / ID_B / "image.json").write_text("not json")
    assert store.by_id(ID_B) is None and store.stores() == []
    assert store.by_id("../../etc") is None


def test_a_killed_staging_is_trashed_and_one_in_progress_is_left(tmp_path: Path) -> None:
    """A staging directory whose lock is free (its stager was killed) is renamed to trash and
    listed for removal, as is trash an earlier removal left; one whose lock is held is not."""
    store = SharedStore(str(tmp_path))
    for sub in ("killed", "running"):
        os.makedirs(tmp_path / "staging" / sub)
        (tmp_path / "staging" / sub / "lock").write_text("")
    os.makedirs(tmp_path / "staging" / ".trash-earlier")
    fd = os.open(tmp_path / "staging" / "running" / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        found = store.abandoned()
    finally:
        os.close(fd)
    assert sorted(os.path.basename(p) for p in found) == [".trash-earlier", ".trash-killed"]
    assert sorted(os.listdir(tmp_path / "staging")) == [".trash-earlier", ".trash-killed",
                                                       "running"]  # fmt: skip


def test_storage_options_keep_the_users_driver_options_and_add_each_store() -> None:
    """The user's driver options (a mount program as Podman reports it: a table) are kept, as
    --storage-opt replaces them all; each store becomes an additional image store."""
    options = {
        "overlay.mountopt": "nodev",
        "overlay.mount_program": {"Executable": "/usr/bin/fuse-overlayfs", "Version": "1.10"},
        "overlay.ignore_chown_errors": True,
        "overlay.size": "",
    }
    assert storage_options("overlay", options, ["/s/a", "/s/b"]) == [
        "--storage-opt", "overlay.ignore_chown_errors=true",
        "--storage-opt", "overlay.mount_program=/usr/bin/fuse-overlayfs",
        "--storage-opt", "overlay.mountopt=nodev",
        "--storage-opt", "overlay.imagestore=/s/a",
        "--storage-opt", "overlay.imagestore=/s/b",
    ]  # fmt: skip


def test_a_job_carries_the_staged_image_to_the_node(tmp_path: Path) -> None:
    """The image the login side staged (id, digest, store) reaches the node helper unchanged;
    a job without one reads back as None."""
    plan = plan_mod.TaskPlan(run_id="r", task_dir="/t", try_counter=1, container_dir="/c",
                             mounts=[], image="img")  # fmt: skip
    staged = Staged(ID_A, "sha256:d", "/shared/images/a/store")
    files = protocol.write_job(str(tmp_path / "try1"), plan, settings.Settings(), staged=staged)
    assert protocol.read_job(files["json"]).staged == staged
    files = protocol.write_job(str(tmp_path / "try2"), plan, settings.Settings())
    assert protocol.read_job(files["json"]).staged is None
