"""Host facts parsing, process watches, doctor's config editing, and the cross-process budget
ledger."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from miniwdl_podman import budget, configfiles, host

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MOUNTINFO = """\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:45 / /home rw,relatime shared:20 - nfs4 fs:/home rw,vers=4.2
41 40 0:46 / /home/bob/scratch\\040space rw - lustre 10.0.0.1@tcp:/scratch rw
42 22 0:47 / /tmp rw - tmpfs tmpfs rw
"""


def test_fs_type_of_nested_mounts_from_mountinfo(tmp_path: Path) -> None:
    """The nearest mount point wins; escaped spaces are decoded; missing paths use ancestors."""
    assert host.fs_type("/home/alice/.local/share/containers/storage", MOUNTINFO) == "nfs4"
    assert host.fs_type("/home/bob/scratch space/graph", MOUNTINFO) == "lustre"
    assert host.fs_type("/tmp/x", MOUNTINFO) == "tmpfs"
    assert host.fs_type("/var/lib/containers", MOUNTINFO) == "ext4"


def test_network_file_systems_are_recognised() -> None:
    """NFS, Lustre, GPFS, CIFS, BeeGFS, sshfs are network file systems; ext4/xfs/tmpfs are not."""
    for kind in ("nfs", "nfs4", "lustre", "gpfs", "cifs", "beegfs", "fuse.sshfs"):
        assert host.is_network_fs(kind), kind
    for kind in ("ext4", "xfs", "tmpfs", "btrfs", "overlay"):
        assert not host.is_network_fs(kind), kind


def test_subid_count_by_name_or_uid() -> None:
    """Ranges are summed for the user's name or uid; other users' lines are ignored."""
    text = "alice:100000:65536\n1001:300000:1000\nbob:165536:65536\nbroken\n"
    assert host.subid_count(text, "alice", 1001) == 66536
    assert host.subid_count(text, "carol", 1002) == 0


def test_tun_usable_needs_read_and_write(tmp_path: Path) -> None:
    """A device the user cannot open read-write, or a missing one, is not usable."""
    dev = tmp_path / "tun"
    dev.write_text("")
    dev.chmod(0o600)
    assert host.tun_usable(str(dev))
    dev.chmod(0o400)
    assert not host.tun_usable(str(dev)) or os.geteuid() == 0
    assert not host.tun_usable(str(tmp_path / "missing"))


def test_update_toml_merges_and_backs_up(tmp_path: Path) -> None:
    """Existing tables and keys survive, the new values are set, and a backup is kept."""
    path = tmp_path / "containers.conf"
    path.write_text('[engine]\nruntime = "crun"\nevents_logger = "file"\n[network]\nx = [1, 2]\n')
    msg = configfiles.update_toml(str(path), {"engine": {"runtime": "runc"}})
    data = tomllib.loads(path.read_text())
    assert data["engine"] == {"runtime": "runc", "events_logger": "file"}
    assert data["network"] == {"x": [1, 2]}
    backups = list(tmp_path.glob("containers.conf.bak-*"))
    assert len(backups) == 1 and 'runtime = "crun"' in backups[0].read_text()
    assert "backup" in msg
    fresh = tmp_path / "new" / "storage.conf"
    configfiles.update_toml(
        str(fresh), {"storage": {"graphroot": "/var/tmp/g"}, "storage.options.overlay": {"a": "b"}}
    )
    assert tomllib.loads(fresh.read_text())["storage"]["options"]["overlay"] == {"a": "b"}


def test_update_miniwdl_cfg(tmp_path: Path) -> None:
    """A miniwdl config option is set without losing the others."""
    path = tmp_path / "miniwdl.cfg"
    path.write_text("[scheduler]\ncontainer_backend = podman_rootless\n")
    configfiles.update_miniwdl_cfg(str(path), "podman_rootless", "network", "none")
    parser = configparser.ConfigParser()
    parser.read(path)
    assert parser.get("scheduler", "container_backend") == "podman_rootless"
    assert parser.get("podman_rootless", "network") == "none"


def test_edits_keep_the_users_comments_and_other_settings(tmp_path: Path) -> None:
    """Podman's TOML and miniwdl's INI are edited in place: every other line, comments
    included, stays; the key is replaced where it was, or added to its table."""
    toml = tmp_path / "storage.conf"
    toml.write_text(
        '# my storage\n[storage]\ndriver = "vfs"  # slow\nrunroot = "/run/x"\n'
        '\n[storage.options]\n# keep\nmount_program = "/usr/bin/fuse-overlayfs"\n'
    )
    configfiles.update_toml(str(toml), {"storage": {"driver": "overlay", "graphroot": "/g"}})
    text = toml.read_text()
    assert "# my storage" in text and "# keep" in text and 'runroot = "/run/x"' in text
    assert tomllib.loads(text)["storage"]["driver"] == "overlay"
    assert tomllib.loads(text)["storage"]["graphroot"] == "/g"
    assert text.index('driver = "overlay"') < text.index("[storage.options]")
    cfg = tmp_path / "miniwdl.cfg"
    cfg.write_text("# site defaults\n[scheduler]\ncontainer_backend: podman_rootless\n"
                   "[podman_rootless]\n; old\nnetwork = slirp4netns\n")  # fmt: skip
    configfiles.update_miniwdl_cfg(str(cfg), "podman_rootless", "network", "none")
    text = cfg.read_text()
    assert "# site defaults" in text and "; old" in text and "slirp4netns" not in text
    assert "container_backend: podman_rootless" in text and "network = none" in text


def test_a_file_the_line_editor_cannot_change_safely_is_left_alone(tmp_path: Path) -> None:
    """A value over several lines is refused with what to set by hand; the file is unchanged
    and no backup is made."""
    toml = tmp_path / "containers.conf"
    original = '[engine]\nruntime = [\n  "crun",\n]\n'
    toml.write_text(original)
    with pytest.raises(configfiles.EditRefused) as exn:
        configfiles.update_toml(str(toml), {"engine": {"runtime": "runc"}})
    assert 'set by hand: [engine] runtime = "runc"' in str(exn.value)
    assert toml.read_text() == original and not list(tmp_path.glob("*.bak-*"))


def test_a_drop_in_is_written_whole(tmp_path: Path) -> None:
    """A drop-in of our own: a fresh file, the tables asked for, how to undo."""
    path = tmp_path / "containers.conf.d" / "50-miniwdl-podman.conf"
    configfiles.write_dropin(str(path), {"engine": {"runtime": "runc"}})
    assert tomllib.loads(path.read_text()) == {"engine": {"runtime": "runc"}}
    assert "remove this file to undo" in path.read_text()


def test_shared_budget_is_shared_and_ignores_dead_processes(tmp_path: Path) -> None:
    """Two schedulers on one ledger (as two processes) never exceed the budget together, and
    entries of dead processes do not count."""
    (tmp_path / budget.LEDGER).write_text(json.dumps([{"id": "x", "pid": 999999999, "cpu": 2}]))
    a = budget.SharedScheduler(2, 1 << 30, str(tmp_path), poll=0.01)
    b = budget.SharedScheduler(2, 1 << 30, str(tmp_path), poll=0.01)
    held = threading.Event()
    order = []

    def first() -> None:
        with a.reserve(2, 0):
            order.append("a in")
            held.set()
            time.sleep(0.2)
            order.append("a out")

    t = threading.Thread(target=first)
    t.start()
    held.wait()
    with b.reserve(1, 0) as r:
        order.append("b in")
        assert r.waited > 0.1
    t.join()
    assert order == ["a in", "a out", "b in"]
    assert json.loads((tmp_path / budget.LEDGER).read_text()) == []


def test_shared_budget_shares_gpu_slots_between_processes(tmp_path: Path) -> None:
    """A GPU slot held in one process's scheduler makes another's GPU task wait, not its
    other tasks."""
    a = budget.SharedScheduler(8, 1 << 30, str(tmp_path), gpu_slots=1, poll=0.01)
    b = budget.SharedScheduler(8, 1 << 30, str(tmp_path), gpu_slots=1, poll=0.01)
    held, release = threading.Event(), threading.Event()

    def first() -> None:
        with a.reserve(1, 0, gpu=True):
            held.set()
            release.wait()

    t = threading.Thread(target=first)
    t.start()
    held.wait()
    with b.reserve(1, 0) as r:
        assert r.waited < 0.1  # no GPU asked: fits beside the GPU task at once
    threading.Timer(0.2, release.set).start()
    with b.reserve(1, 0, gpu=True) as r:
        assert r.waited > 0.1
        assert r.gpu == 1
    t.join()


def test_gpu_slots_another_run_holds_never_stop_tasks_without_gpu(tmp_path: Path) -> None:
    """A run allowed two GPU slots holds both; a run allowed one still starts its tasks that
    ask for no GPU at once (only its GPU tasks wait)."""
    generous = budget.SharedScheduler(8, 1 << 30, str(tmp_path), gpu_slots=2, poll=0.01)
    strict = budget.SharedScheduler(8, 1 << 30, str(tmp_path), gpu_slots=1, poll=0.01)
    assert strict.fits(1, 0, 0, (2, 0, 2)) and not strict.fits(1, 0, 1, (2, 0, 2))
    held = generous.reserve(1, 0, gpu=True), generous.reserve(1, 0, gpu=True)
    with held[0], held[1], strict.reserve(1, 0) as r:
        assert r.waited < 0.1


def test_a_pid_with_another_start_time_is_another_process() -> None:
    """pid_alive with a recorded start time: the same process is alive, a recycled pid (same
    number, another start time) is not; no start time recorded: the pid alone decides."""
    from miniwdl_podman import host as host_mod

    me = os.getpid()
    started = host_mod.start_time(me)
    assert started.isdigit()
    assert host_mod.own_start_time() == started
    assert host_mod.pid_alive(me, started) and host_mod.pid_alive(me)
    assert not host_mod.pid_alive(me, str(int(started) + 1))
    assert not host_mod.pid_alive(999_999_999, started)


@pytest.mark.parametrize(
    ("os_release", "package", "hint"),
    [('ID=debian\nVERSION_ID="12"\n', "uidmap", "apt-get install uidmap"),
     ('ID=ubuntu\nID_LIKE=debian\n', "podman", "apt-get install podman"),
     ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "uidmap", "dnf install shadow-utils"),
     ('ID=almalinux\nID_LIKE="rhel centos fedora"\n', "podman", "dnf install podman"),
     ('ID=fedora\n', "podman", "dnf install podman"),
     ('ID="opensuse-leap"\nID_LIKE="suse opensuse"\n', "uidmap", "zypper install shadow"),
     ('ID=arch\n', "uidmap", "your distribution's uidmap package")],
)  # fmt: skip
def test_install_hints_fit_the_distribution(os_release: str, package: str, hint: str) -> None:
    """dnf on RHEL/Fedora/Rocky/Alma, apt-get on Debian/Ubuntu, zypper on SUSE, with each
    family's package name."""
    assert host.install_hint(package, os_release) == hint


def test_a_site_wide_miniwdl_config_is_not_edited(tmp_path: Path) -> None:
    """--fix does not touch a miniwdl config that is not the user's: it says to copy it to the
    user's own file (miniwdl reads only the first it finds) and what to add."""
    import logging

    from miniwdl_podman import doctor, doctor_fixes

    site = tmp_path / "etc-xdg-miniwdl.cfg"
    site.write_text("[scheduler]\ncontainer_backend = podman_rootless\n")
    before = site.read_text()
    checks = [doctor.Check("network", doctor.FAIL, "tun", action="network")]
    done = doctor_fixes.apply(checks, uid=os.geteuid() + 1, cfg_path=str(site), settings=None,
                              logger=logging.getLogger("t"))  # fmt: skip
    assert site.read_text() == before
    (line,) = done
    assert line.startswith("not changed:") and "is not yours" in line
    assert "network = none" in line and "MINIWDL__PODMAN_ROOTLESS__NETWORK=none" in line


def test_nspid_lists_a_process_ids_outermost_first() -> None:
    """NSpid gives a process's pid in each pid namespace, its own (here 1) last."""
    status = "Name:\tcatatonit\nTgid:\t4242\nNSpid:\t4242\t1\nPPid:\t4240\n"
    assert host.nspid(status) == ("4242", "1")
    assert host.nspid("Name:\tx\n") == ()


def test_process_watch_only_takes_a_namespaces_first_process() -> None:
    """A process of this pid namespace is not watched (not a container's init); one that is
    gone counts as ended at once."""
    assert host.ProcessWatch.namespace_init(os.getpid()) is None
    assert host.ProcessWatch.namespace_init(0) is None
    child = subprocess.Popen(["true"])
    child.wait()
    watch = host.ProcessWatch.namespace_init(child.pid)
    assert watch is not None and watch.ended(0)
