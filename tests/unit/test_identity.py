"""Identity policy: user namespace, in-container user and $HOME for every kind of image."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from miniwdl_podman import identity, libpod, mounts, plan, settings, spec
from miniwdl_podman.identity import HostIds, IdentityError, ImageUser

HOST = HostIds(uid=1002, gid=1002, subuids=65536, subgids=65536)
SINGLE = HostIds(uid=1002, gid=1002, subuids=0, subgids=0)
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
    "app:x:1500:1600::/home/app:/bin/sh\n"
    "broken line\n"
)
GROUP = "root:x:0:\napps:x:1600:\nstaff:x:50:\n"


def test_host_ids_count_subordinate_ranges() -> None:
    """Subordinate ids are the mapped sizes beyond container id 0, from podman info."""
    info: Dict[str, Any] = {
        "host": {
            "idMappings": {
                "uidmap": [
                    {"container_id": 0, "host_id": 1002, "size": 1},
                    {"container_id": 1, "host_id": 165536, "size": 65536},
                ],
                "gidmap": [{"container_id": 0, "host_id": 1002, "size": 1}],
            }
        }
    }
    ids = identity.host_ids(info, 1002, 1002)
    assert (ids.subuids, ids.subgids, ids.single_uid) == (65536, 0, True)


@pytest.mark.parametrize(
    ("user_spec", "uid", "gid", "home"),
    [
        ("", 0, 0, "/root"),
        ("root", 0, 0, "/root"),
        ("app", 1500, 1600, "/home/app"),
        ("1500", 1500, 1600, "/home/app"),
        ("app:staff", 1500, 50, "/home/app"),
        ("1500:77", 1500, 77, "/home/app"),
        ("1000", 1000, 1000, None),
        ("nobody", 65534, 65534, "/nonexistent"),
    ],
)
def test_resolve_image_user(user_spec: str, uid: int, gid: int, home: str) -> None:
    """USER names, numbers and groups resolve against the image's passwd/group files."""
    u = identity.resolve_image_user("img", user_spec, PASSWD, GROUP)
    assert (u.uid, u.gid, u.home) == (uid, gid, home)


@pytest.mark.parametrize("user_spec", ["ghost", "app:ghosts"])
def test_unknown_user_or_group_fails_naming_it(user_spec: str) -> None:
    """A USER the image does not define fails with its name and the as_user way out."""
    with pytest.raises(IdentityError) as info:
        identity.resolve_image_user("quay.io/x:1", user_spec, PASSWD, GROUP)
    assert "quay.io/x:1" in str(info.value)
    assert "ghost" in str(info.value)
    assert "as_user = true" in str(info.value)


def test_root_image_uses_default_userns() -> None:
    """A root image runs as container root = the invoking user: no keep-id, no user override."""
    ident = identity.decide(HOST, "img", ImageUser(spec=""))
    assert ident.userns == ""
    assert ident.user is None
    assert ident.home is None


def test_non_root_image_uses_keep_id_dict_form() -> None:
    """An image USER maps onto the invoking user with keep-id uid=,gid= (dict form) and runs so."""
    user = identity.resolve_image_user("img", "app", PASSWD, GROUP)
    ident = identity.decide(HOST, "img", user, home_exists=True)
    assert ident.userns == {"nsmode": "keep-id", "value": "uid=1500,gid=1600"}
    assert ident.user == "1500:1600"
    assert ident.home == "/home/app"
    assert ident.home_tmpfs is None


def test_missing_home_gets_private_tmpfs() -> None:
    """nobody's /nonexistent home gets a tmpfs there; a uid with no entry gets a fallback home."""
    nobody = identity.resolve_image_user("img", "nobody", PASSWD, GROUP)
    ident = identity.decide(HOST, "img", nobody, home_exists=False)
    assert (ident.home, ident.home_tmpfs) == ("/nonexistent", "/nonexistent")
    anon = identity.resolve_image_user("img", "1000", PASSWD, GROUP)
    ident = identity.decide(HOST, "img", anon)
    assert (ident.home, ident.home_tmpfs) == (identity.FALLBACK_HOME, identity.FALLBACK_HOME)


def test_group_zero_is_replaced_for_keep_id() -> None:
    """An image user whose group is 0 runs with its own number as group (keep-id cannot map 0)."""
    ident = identity.decide(HOST, "img", ImageUser(spec="1001", uid=1001, gid=0, home="/h"))
    assert ident.user == "1001:1001"


def test_as_user_runs_as_invoking_ids() -> None:
    """[task_runtime] as_user: plain keep-id as the invoking uid:gid with a writable HOME."""
    ident = identity.decide(HOST, "img", ImageUser(spec="app", resolved=False), as_user=True)
    assert ident.userns == "keep-id"
    assert ident.user == "1002:1002"
    assert ident.home_tmpfs == identity.FALLBACK_HOME


def test_single_uid_mode_runs_root_images_and_refuses_others() -> None:
    """Without subuids, root images run as container root; a USER image fails with the fix."""
    assert identity.decide(SINGLE, "img", ImageUser(spec="")).user == "0:0"
    assert identity.decide(SINGLE, "img", ImageUser(spec="app", resolved=False), True).userns == ""
    with pytest.raises(IdentityError) as info:
        identity.decide(SINGLE, "img", ImageUser(spec="app", resolved=False))
    assert "no subordinate uid/gid range" in str(info.value)
    assert "usermod --add-subuids" in str(info.value)


def test_runs_as_root() -> None:
    """Only empty, root and 0 (with any group) mean root."""
    assert identity.runs_as_root("")
    assert identity.runs_as_root("root:staff")
    assert identity.runs_as_root("0:5")
    assert not identity.runs_as_root("app")
    assert not identity.runs_as_root("1000")


def _payload(ident: identity.Identity, mode: str = "disable") -> Dict[str, Any]:
    sec, relabel = mounts.selinux_options(mode)
    paths = mounts.TaskPaths("/mnt/c", "/r/work", "/r/stdout.txt", "/r/stderr.txt", "/r/command")
    task = plan.TaskPlan(
        run_id="r",
        task_dir="/r",
        try_counter=1,
        container_dir="/mnt/c",
        mounts=mounts.task_mounts(
            paths, {"/in/x": "/mnt/c/work/_miniwdl_inputs/0/x"}, True, relabel, ident.home_tmpfs
        ),
        security_opt=sec,
        env={"HOME_NOT": "1"},
    )
    s = spec.build(task, settings=settings.Settings(), image="img", identity=ident)
    return libpod.create_body(s)


def test_image_user_payload_has_keep_id_user_home_and_tmpfs() -> None:
    """The create payload carries keep-id uid/gid, the user, HOME and a 1777 tmpfs."""
    ident = identity.decide(HOST, "img", ImageUser(spec="1000", uid=1000, gid=1000))
    p = _payload(ident)
    assert p["userns"] == {"nsmode": "keep-id", "value": "uid=1000,gid=1000"}
    assert p["user"] == "1000:1000"
    assert p["env"]["HOME"] == identity.FALLBACK_HOME
    (tmpfs,) = [m for m in p["mounts"] if m["type"] == "tmpfs"]
    assert tmpfs["destination"] == identity.FALLBACK_HOME
    assert tmpfs["options"] == ["mode=1777"]


@pytest.mark.parametrize(
    ("mode", "selinux_opts", "owned_options", "input_options"),
    [
        ("disable", ["disable"], [], ["ro"]),
        ("shared", None, ["z"], ["ro"]),
        ("private", None, ["Z"], ["ro"]),
        ("none", None, [], ["ro"]),
    ],
)
def test_selinux_modes(
    mode: str, selinux_opts: Any, owned_options: list, input_options: list
) -> None:
    """Each selinux value: libpod's 'disable' spelling, z/Z only on owned mounts, inputs never."""
    p = _payload(identity.Identity(userns=""), mode)
    assert p.get("selinux_opts") == selinux_opts
    by_dest = {m["destination"]: m["options"] for m in p["mounts"]}
    assert by_dest["/mnt/c/work"] == owned_options
    assert by_dest["/mnt/c/stdout.txt"] == owned_options
    assert by_dest["/mnt/c/command"] == ["ro", *owned_options]
    assert by_dest["/mnt/c/work/_miniwdl_inputs/0/x"] == input_options


def test_selinux_enforcing_reads_the_flag(tmp_path: Any) -> None:
    """Enforcing is read from the selinuxfs flag; a missing file means not enforcing."""
    flag = tmp_path / "enforce"
    flag.write_text("1")
    assert mounts.selinux_enforcing(str(flag))
    flag.write_text("0")
    assert not mounts.selinux_enforcing(str(flag))
    assert not mounts.selinux_enforcing(str(tmp_path / "missing"))
