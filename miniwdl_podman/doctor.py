"""``miniwdl-podman doctor``'s checks: does rootless Podman work here for miniwdl?

Each check reports PASS, WARN, FAIL (or INFO) with the exact fix, and names the ``--fix``
action that applies (:mod:`~miniwdl_podman.doctor_fixes` does them; the command line is
:mod:`~miniwdl_podman.cli`). The checks go through the same code as the backend (settings, the
runtime assembly, the task plan and the launcher: the test container is a task's), so "PASS"
means what a ``miniwdl run`` will meet.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from WDL.runtime import config as wdl_config

from . import __version__, host, identity, mounts, podman_facts, storage
from . import plan as plan_mod
from . import settings as settings_mod
from .engine import Engine, ImageRef, processes
from .errors import BackendError, hint_for
from .runtime import Runtime, open_runtime
from .settings import SECTION

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass

PASS, WARN, FAIL, INFO = "PASS", "WARN", "FAIL", "INFO"


@dataclass
class Check:
    """One finding: what was checked, how it stands, and how to fix it. ``id`` is the name in
    lower-case words joined by ``-`` (``api service`` → ``api-service``): stable, for scripts
    reading ``doctor --json`` (:data:`JSON_SCHEMA`)."""

    name: str
    status: str
    detail: str
    fix: str = ""
    action: Optional[str] = None  # the --fix action that applies, if any
    data: Dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


# the version of doctor --json's layout: {"tool", "version", "schema", "checks": [{"id", "name",
# "status", "detail", "fix", "action", "data"}], "fixed", "ok"}; raised when a field changes
JSON_SCHEMA = 1


# -- the checks ---------------------------------------------------------------------------------


class Doctor:
    """Runs the checks (and fixes) for the invoking user."""

    def __init__(
        self,
        image: Optional[str] = None,
        logger: Optional[logging.Logger] = None,
        node: Optional[bool] = None,
        cfg_file: Optional[str] = None,
    ):
        """``node``: check this host as a compute node of ``podman_rootless_slurm`` (what the
        node helper uses); None: when run inside a Slurm job with that backend selected.
        ``cfg_file``: the miniwdl configuration to judge (None: the one miniwdl would find)."""
        self.image = image
        self.node = node
        self.slurm_settings: Optional[settings_mod.SlurmSettings] = None
        self.logger = logger or logging.getLogger("miniwdl-podman.doctor")
        self.uid = os.geteuid()
        self.user = pwd.getpwuid(self.uid).pw_name
        self.cfg = wdl_config.Loader(self.logger, [cfg_file] if cfg_file else None)
        self.cfg_path: Optional[str] = getattr(self.cfg, "cfg_filename", None)
        self.settings: Optional[settings_mod.Settings] = None
        self.runtime: Optional[Runtime] = None

    # each check appends to self.checks
    def run(self) -> List[Check]:
        self.checks: List[Check] = []
        steps: List[Callable[[], None]] = [
            self.check_podman,
            self.check_uidmap,
            self.check_runtime_dir,
            self.check_environment,
            self.check_subids,
            self.check_config,
            self.check_node,
            self.check_service,
            self.check_oci_runtime,
            self.check_storage,
            self.check_cgroups,
            self.check_selinux,
            self.check_tun,
            self.check_container,
            self.check_leftovers,
        ]
        try:
            for step in steps:
                step()
        finally:
            if self.runtime is not None:
                self.runtime.close(self.logger)
                self.runtime = None
        return self.checks

    @property
    def engine(self) -> Optional[Engine]:
        return self.runtime.engine if self.runtime is not None else None

    def add(self, *args: Any, **kwargs: Any) -> Check:
        check = Check(*args, **kwargs)
        self.checks.append(check)
        return check

    def check_podman(self) -> None:
        exe = shutil.which("podman")
        if not exe:
            self.add(
                "podman",
                FAIL,
                "podman is not on PATH",
                f"install Podman ({host.install_hint('podman')})",
            )
            return
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60,
                             env=processes.podman_environ(os.environ))  # fmt: skip
        self.add("podman", PASS, f"{out.stdout.strip()} ({exe})")

    def check_uidmap(self) -> None:
        missing = [t for t in ("newuidmap", "newgidmap") if not shutil.which(t)]
        if missing:
            self.add(
                "uidmap",
                FAIL,
                f"{' and '.join(missing)} not found: rootless Podman cannot map ids",
                f"ask an administrator to install newuidmap/newgidmap"
                f" ({host.install_hint('uidmap')})",
            )
        else:
            self.add("uidmap", PASS, "newuidmap and newgidmap present")

    def check_runtime_dir(self) -> None:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if not xdg:
            base = host.private_dir(self.uid)
            self.add(
                "runtime dir",
                WARN,
                "XDG_RUNTIME_DIR is not set (no systemd user session: ssh, su, cron or a batch"
                f" job); the backend uses a private runtime dir under {base} and its own API"
                " service instead",
                "nothing needed; to use a long-lived service instead, `loginctl enable-linger`",
            )
            return
        if processes.unusable_runtime_dir(os.environ) is not None:
            self.add(
                "runtime dir",
                WARN,
                f"XDG_RUNTIME_DIR={xdg} is not a directory you can write (plain Podman fails"
                " every container with it); the backend runs Podman without it",
                "unset XDG_RUNTIME_DIR, or log in again so that it exists",
            )
            return
        st = os.stat(xdg)
        if st.st_uid != self.uid or st.st_mode & 0o077:
            self.add(
                "runtime dir",
                WARN,
                f"XDG_RUNTIME_DIR={xdg} is not a 0700 directory of yours; the backend will not"
                " put its private service there",
                f"unset XDG_RUNTIME_DIR or fix it (chmod 700 {xdg})",
            )
        else:
            self.add("runtime dir", PASS, f"XDG_RUNTIME_DIR={xdg}")

    def check_environment(self) -> None:
        bad = {
            var: why
            for var, why in processes.unusable_environment(os.environ).items()
            if var != "XDG_RUNTIME_DIR"  # the runtime dir check says more about that one
        }
        if bad:
            listed = ", ".join(f"{v}={os.environ[v]} ({why})" for v, why in sorted(bad.items()))
            self.add(
                "environment",
                WARN,
                f"{listed}: plain Podman may fail with these (Podman 4.3 panics in its image"
                " look-up with such a TMPDIR); the backend starts Podman without them",
                f"unset {' '.join(sorted(bad))}, or point them at what exists on this host",
                data={"unusable": bad},
            )
        else:
            self.add("environment", PASS, "TMPDIR, HOME, XDG_*_HOME and CONTAINERS_* fit this host")

    def check_subids(self) -> None:
        uids = host.subid_count(host.read_text("/etc/subuid"), self.user, self.uid)
        gids = host.subid_count(host.read_text("/etc/subgid"), self.user, self.uid)
        if uids and gids:
            self.add("subuids", PASS, f"{uids} subordinate uids, {gids} gids",
                     data={"subuids": uids, "subgids": gids})  # fmt: skip
        else:
            self.add(
                "subuids",
                WARN,
                f"no subordinate uid/gid range for {self.user} in /etc/subuid and /etc/subgid:"
                " single-uid mode (tasks run as container root; images with a non-root USER,"
                " or files of several owners, cannot run)",
                identity.SUBUID_FIX,
                data={"subuids": uids, "subgids": gids},
            )

    def check_config(self) -> None:
        where = self.cfg_path or "no miniwdl config file (defaults and environment only)"
        try:
            self.settings = settings_mod.load(self.cfg)
        except BackendError as exn:
            self.add("miniwdl config", FAIL, f"{where}: {exn}", "fix the option named above")
            return
        backend = self.cfg.get("scheduler", "container_backend", "docker_swarm")
        if self.node is None:
            self.node = backend == "podman_rootless_slurm" and "SLURM_JOB_ID" in os.environ
        if self.node:
            try:
                self.slurm_settings = settings_mod.load_slurm(self.cfg)
            except BackendError as exn:
                self.add("miniwdl config", FAIL, f"{where}: {exn}", "fix the option named above")
                self.settings = None
                return
            ss = self.slurm_settings
            # what the node helper runs with: a private cgroupfs service, the node's store
            self.settings = settings_mod.node_settings(
                self.settings,
                settings_mod.node_path(ss.node_storage, os.environ),
                settings_mod.node_path(ss.node_runtime_dir, os.environ),
            )
            self.add("miniwdl config", PASS, f"{where}: container_backend = {backend}; checking"
                     " this host as a compute node: the node helper's private service (cgroupfs),"
                     " node_storage and node_python", data={"file": self.cfg_path})  # fmt: skip
        elif backend == "podman_rootless_slurm":
            self.add("miniwdl config", PASS, f"{where}: container_backend ="
                     " podman_rootless_slurm (tasks run as Slurm jobs; the checks below are of"
                     " this host's Podman: run `srun miniwdl-podman doctor` for a compute"
                     " node's)", data={"file": self.cfg_path})  # fmt: skip
        elif backend != "podman_rootless":
            self.add(
                "miniwdl config",
                WARN,
                f"{where}: container_backend is {backend!r}, so miniwdl will not use this backend",
                "export MINIWDL__SCHEDULER__CONTAINER_BACKEND=podman_rootless (or"
                " podman_rootless_slurm), or set container_backend = podman_rootless under"
                " [scheduler] in your miniwdl config",
                data={"file": self.cfg_path},
            )
        else:
            self.add("miniwdl config", PASS, f"{where}: container_backend = podman_rootless",
                     data={"file": self.cfg_path})  # fmt: skip

    def check_node(self) -> None:
        """On a compute node: the node storage the helper will use, and node_python."""
        ss = self.slurm_settings
        if not self.node or ss is None:
            return
        option = f"[{settings_mod.SLURM_SECTION}]"
        storage = settings_mod.node_path(ss.node_storage, os.environ)
        if not storage:
            self.add("node storage", INFO, "node_storage is empty: the node helper uses your"
                     " own Podman store on the node")  # fmt: skip
        else:
            try:
                os.makedirs(storage, mode=0o700, exist_ok=True)
                usable = os.access(storage, os.W_OK | os.X_OK)
                problem = "" if usable else "not writable by you"
            except OSError as exn:
                problem = str(exn.strerror)
            kind = host.fs_type(storage)
            runroot = os.path.join(storage, "run")
            if not problem and len(runroot) > settings_mod.MAX_RUNROOT:
                problem = (
                    f"its run root {runroot} is longer than the {settings_mod.MAX_RUNROOT}"
                    " characters Podman takes"
                )
            if problem:
                self.add("node storage", FAIL, f"node_storage {storage}: {problem}",
                         f"set {option} node_storage to a directory of yours on node-local disk,"
                         " with a short path (e.g. /tmp/miniwdl-podman-$USER)")  # fmt: skip
            elif host.is_network_fs(kind):
                self.add("node storage", FAIL, f"node_storage {storage} is on a network file"
                         f" system ({kind}), where rootless container storage breaks or crawls",
                         f"set {option} node_storage to node-local disk")  # fmt: skip
            else:
                free, _total = host.free_space(storage)
                self.add("node storage", PASS, f"{storage} ({kind}), {free >> 30} GiB free",
                         data={"path": storage, "fs_type": kind})  # fmt: skip
        python = ss.node_python or sys.executable
        probe = "import sys, miniwdl_podman; sys.stdout.write(miniwdl_podman.__version__)"
        try:
            out = subprocess.run([python, "-c", probe], capture_output=True, text=True,
                                 timeout=120, env=processes.podman_environ(os.environ))  # fmt: skip
            got, said = (out.stdout.strip(), "") if out.returncode == 0 else ("", out.stderr)
        except (OSError, subprocess.SubprocessError) as exn:
            got, said = "", str(exn)
        fix = (
            f"install miniwdl_podman {__version__} for {python} on the compute nodes, or set"
            f" {option} node_python to a Python that has it"
        )
        if got == __version__:
            self.add("node python", PASS, f"{python} imports miniwdl_podman {got}",
                     data={"python": python, "version": got})  # fmt: skip
        elif got:
            self.add("node python", FAIL, f"{python} imports miniwdl_podman {got}, but this is"
                     f" {__version__}: the node helper refuses a job of another version", fix,
                     data={"python": python, "version": got})  # fmt: skip
        else:
            tail = said.strip().splitlines()[-1] if said.strip() else "no answer"
            self.add("node python", FAIL, f"{python} cannot import miniwdl_podman: {tail}", fix,
                     data={"python": python})  # fmt: skip

    def check_service(self) -> None:
        if self.settings is None:
            self.add("api service", INFO, "not checked: the configuration is invalid")
            return
        try:
            # leftovers are reported (and removed by --fix), not reaped by a check
            self.runtime = open_runtime(self.settings, self.logger, reap=False, cached_facts=False)
        except BackendError as exn:
            self.add("api service", FAIL, str(exn), hint_for(str(exn)))
            return
        engine = self.runtime.engine
        self.add("api service", PASS, f"{engine.source}: {engine.url} (Podman"
                 f" {engine.facts.version_text or '?'})")  # fmt: skip

    def _info(self) -> Optional[Dict[str, Any]]:
        return self.engine.info if self.engine is not None else None

    def check_oci_runtime(self) -> None:
        if self.engine is None:
            return
        facts = self.engine.facts
        if facts.runtime_fails_on_cgroups:
            runc = shutil.which("runc") or (
                "/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else None
            )
            self.add(
                "oci runtime",
                FAIL,
                "crun on a cgroup v1 host fails every container ('cgroups in hybrid mode not"
                " supported')",
                'set runtime = "runc" under [engine] in ~/.config/containers/containers.conf'
                + ("" if runc else " (install runc first)"),
                action="runtime" if runc else None,
            )
        else:
            self.add("oci runtime", PASS, f"{facts.runtime or '?'} (cgroup {facts.cgroup_version})")

    def check_storage(self) -> None:
        info = self._info()
        if info is None:
            return
        store = info.get("store", {})
        driver = str(store.get("graphDriverName", "?"))
        graph = str(store.get("graphRoot", ""))
        run = str(store.get("runRoot", ""))
        kinds = storage.fs_types(graph, run, host.fs_type)
        data = {"driver": driver, "graphroot": graph, "runroot": run, "fs_types": kinds}
        findings = {f.topic: f for f in storage.judge(graph, run, driver, host.fs_type)}
        where = findings.get("location")
        if where is not None:
            self.add("storage location", FAIL if where.severe else WARN, where.problem, where.fix,
                     action="storage", data=data)  # fmt: skip
        else:
            self.add("storage location", PASS,
                     ", ".join(f"{p} ({k})" for p, k in kinds.items()), data=data)  # fmt: skip
        if graph:
            free, total = host.free_space(graph)
            if free < min(2 << 30, total // 10):
                self.add(
                    "storage space",
                    WARN,
                    f"{free >> 20} MiB free of {total >> 20} MiB under {graph}",
                    "free space: `podman system prune`, `podman image prune -a`",
                )
            else:
                self.add("storage space", PASS, f"{free >> 30} GiB free under {graph}")
        vfs = findings.get("driver")
        if vfs is not None:
            self.add("storage driver", WARN, vfs.problem, vfs.fix, action="storage")
        else:
            self.add("storage driver", PASS, driver)

    def check_cgroups(self) -> None:
        if self.engine is None:
            return
        facts = self.engine.facts
        enf = podman_facts.enforcement(facts)
        ctl = ",".join(sorted(facts.cgroup_controllers)) or "none"
        what = f"cgroup {facts.cgroup_version}, controllers delegated: {ctl}"
        data = {"version": facts.cgroup_version, "controllers": sorted(facts.cgroup_controllers)}
        if enf.cpu and enf.memory:
            self.add("cgroups", PASS, f"{what}; cpu and memory limits are enforced", data=data)
        else:
            self.add("cgroups", WARN, f"{what}; {enf.why_not}: tasks run without hard limits"
                     " (the scheduler still keeps the host from oversubscription)",
                     enf.fix, data=data)  # fmt: skip

    def check_selinux(self) -> None:
        info = self._info()
        enabled = bool(info and info.get("host", {}).get("security", {}).get("selinuxEnabled"))
        enforcing = mounts.selinux_enforcing()
        mode = self.settings.selinux if self.settings else "disable"
        detail = f"SELinux {'enforcing' if enforcing else 'enabled' if enabled else 'off'};"
        detail += f" [{SECTION}] selinux = {mode}"
        if enforcing and mode != "disable":
            self.add("selinux", WARN, detail + ": confined containers cannot read inputs that"
                     " lack a container label", f"set [{SECTION}] selinux = disable")  # fmt: skip
        else:
            self.add("selinux", PASS, detail)

    def check_tun(self) -> None:
        network = self.settings.network if self.settings else ""
        if network:
            self.add("network", PASS, f"[{SECTION}] network = {network}")
        elif host.tun_usable():
            self.add("network", PASS, "rootless networking can open /dev/net/tun")
        else:
            self.add(
                "network",
                FAIL,
                "/dev/net/tun is missing or not usable by you, so Podman's rootless default"
                " networking fails every container",
                f"set [{SECTION}] network = none (tasks get no network; `--fix` does), or ask an"
                " administrator to `chmod 666 /dev/net/tun`",
                action="network",
            )

    def _test_image(self) -> Optional[ImageRef]:
        assert self.engine is not None
        if self.image:
            return self.engine.images.ensure(self.image, self.logger)
        default = self.cfg.get_dict("task_runtime", "defaults").get("docker", "")
        found = self.engine.images.local(default, self.logger) if default else None
        return found or self.engine.images.smallest_local(self.logger)

    def check_container(self) -> None:
        if self.engine is None or self.settings is None:
            self.add("test container", INFO, "not checked: no Podman API service")
            return
        try:
            image = self._test_image()
        except BackendError as exn:
            self.add("test container", FAIL, str(exn), "pass --image with an image you can pull")
            return
        if image is None:
            self.add(
                "test container",
                WARN,
                "no local image to test with",
                "run `miniwdl-podman doctor --image IMAGE` (it is pulled if needed)",
            )
            return
        assert self.runtime is not None
        networks = ["none"] + ([self.settings.network] if self.settings.network != "none" else [])
        with tempfile.TemporaryDirectory(prefix="miniwdl-podman-doctor-") as tmp:
            for network in networks:
                label = f"test container (network {network or 'default'})"
                task_plan = _test_task(tmp, network or "default", image.id, self.settings, network)
                try:
                    with self.runtime.launcher.start(task_plan, self.logger) as task:
                        outcome = task.wait(None)
                    assert outcome is not None
                    self.runtime.launcher.settle_ownership(task_plan.writable, self.logger)
                except BackendError as exn:
                    action = "network" if network == "" and not host.tun_usable() else None
                    self.add(label, FAIL, str(exn), hint_for(str(exn)), action=action)
                    continue
                code = outcome.exit.code
                if code == 0:
                    self.add(label, PASS, f"a task running `true` ran in image {image.id[:12]}")
                else:
                    self.add(label, FAIL, f"a task running `true` exited {code} in image"
                             f" {image.id[:12]}", "the image may lack /bin/sh or the command"
                             f" shell ({self.settings.command_shell}): pass --image")  # fmt: skip

    def check_leftovers(self) -> None:
        if self.engine is None:
            return
        dead = self.engine.containers.dead_run_containers(self.logger)
        if dead:
            self.add("leftovers", WARN, f"{len(dead)} containers left by dead miniwdl runs:"
                     f" {', '.join(dead[:5])}", "remove them: `--fix` does (or podman rm -f)",
                     action="leftovers")  # fmt: skip
        else:
            self.add("leftovers", PASS, "no containers left by dead miniwdl runs")


def _test_task(
    tmp: str, name: str, image: str, settings: settings_mod.Settings, network: str
) -> plan_mod.TaskPlan:
    """A task running ``true`` in ``image``, laid out and planned as a real task is."""
    task_dir = os.path.join(tmp, name)
    os.makedirs(os.path.join(task_dir, "work"))
    for name_, text in (("stdout.txt", ""), ("stderr.txt", ""), ("command", "true\n")):
        with open(os.path.join(task_dir, name_), "w") as out:
            out.write(text)
    paths = mounts.TaskPaths(
        container_dir="/mnt/miniwdl_task_container",
        host_work_dir=os.path.join(task_dir, "work"),
        host_stdout=os.path.join(task_dir, "stdout.txt"),
        host_stderr=os.path.join(task_dir, "stderr.txt"),
        host_command=os.path.join(task_dir, "command"),
    )
    return plan_mod.task_plan(
        run_id=f"doctor-{name}",
        task_dir=task_dir,
        try_counter=1,
        paths=paths,
        input_path_map={},
        bind_inputs=True,
        runtime_values={"docker": image},
        default_image=image,
        settings=settings,
        network=network,
        limits={},
    )
