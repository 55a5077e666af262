"""The Slurm backend's pure parts: sbatch arguments, Slurm's answers, job ends, settings, and the
plan and settings that travel to the compute node."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import pytest
from WDL import Error
from WDL.runtime.error import Interrupted

from miniwdl_podman import __version__, errors, exits, protocol, settings, slurm
from miniwdl_podman import plan as plan_mod
from miniwdl_podman.mounts import Mount

CMD = ["/venv/bin/python", "-m", "miniwdl_podman", "node-run", "/runs/a b/try1.json"]


def _args(**kw: object) -> list:
    base = dict(
        job_name="miniwdl-call-x", cpu=4, memory_bytes=3 * 2**30 + 1, time_minutes=0,
        placement=slurm.Placement(), output="/runs/try1.log", workdir="/runs",
        comment="miniwdl-podman:1@h", command=CMD,
    )  # fmt: skip
    base.update(kw)
    return slurm.sbatch_args(settings.SlurmSettings(), **base)  # type: ignore[arg-type]


def test_sbatch_args_carry_the_task_runtime_and_quote_the_helper() -> None:
    """cpu, memory (MiB, rounded up), output, comment and a quoted --wrap; no --time or --gres
    unless asked."""
    args = _args()
    assert "--parsable" in args and "--ntasks=1" in args and "--cpus-per-task=4" in args
    assert "--no-requeue" in args  # miniwdl retries, in a fresh work dir
    assert "--open-mode=append" in args  # two jobs of one attempt never truncate its log
    assert "--mem=3073M" in args
    assert "--comment=miniwdl-podman:1@h" in args
    assert (
        args[-1] == "--wrap=exec /venv/bin/python -m miniwdl_podman node-run '/runs/a b/try1.json'"
    )
    assert not [a for a in args if a.startswith(("--time", "--gres"))]


def test_sbatch_args_for_a_run_dir_slurm_cannot_take() -> None:
    """A task dir with %, a backslash or bytes that are not UTF-8: the job's shell writes the
    log (the path quoted byte for byte), and sbatch is given only plain paths."""
    odd = "/runs/50%\\x\n\udcff"
    assert not slurm.slurm_path_safe(odd) and slurm.slurm_path_safe("/runs/a b:c")
    args = _args(output=f"{odd}/try1.log", workdir=odd)
    assert "--output=/dev/null" in args and "--chdir=/" in args
    assert args[-1] == (
        "--wrap=exec >>'/runs/50%\\x\n\udcff/try1.log' 2>&1; exec /venv/bin/python -m"
        " miniwdl_podman node-run '/runs/a b/try1.json'"
    )
    assert not [a for a in args[:-1] if odd in a]


def test_sbatch_args_time_gpu_and_extra_args() -> None:
    """runtime.time_minutes beats the configured default; gpu adds the gres; extra args go last
    before the command."""
    ss = settings.slurm_from_mapping(
        {"extra_args": "--partition=gpu --qos 'high prio'", "time_minutes": "30"}
    )
    args = slurm.sbatch_args(
        ss, job_name="j", cpu=0, memory_bytes=0, time_minutes=0,
        placement=slurm.placement({"gpu": True}, ss), output="o", workdir="w", comment="c",
        command=["x"],
    )  # fmt: skip
    assert "--time=30" in args and "--gres=gpu:1" in args and "--cpus-per-task=1" in args
    assert args[-4:-1] == ["--partition=gpu", "--qos", "high prio"]
    assert not [a for a in args if a.startswith("--mem")]
    args = slurm.sbatch_args(
        ss, job_name="j", cpu=1, memory_bytes=0, time_minutes=5, placement=slurm.Placement(),
        output="o", workdir="w", comment="c", command=["x"],
    )  # fmt: skip
    assert "--time=5" in args


def test_task_memory_replaces_a_site_default_of_memory_per_cpu() -> None:
    """A task with runtime.memory gets --mem and none of the extra_args' --mem-per-cpu or
    --mem-per-gpu (sbatch refuses both together); a task without keeps them."""
    ss = settings.slurm_from_mapping(
        {"extra_args": "--mem-per-cpu=2G --partition=p --mem-per-gpu 8G --qos=q"}
    )
    common = dict(job_name="j", cpu=1, time_minutes=0, placement=slurm.Placement(), output="o",
                  workdir="w", comment="c", command=CMD)  # fmt: skip
    sized = slurm.sbatch_args(ss, memory_bytes=2**30, **common)  # type: ignore[arg-type]
    assert "--mem=1024M" in sized
    assert not [a for a in sized if a.startswith("--mem-per") or a == "8G"]
    assert "--partition=p" in sized and "--qos=q" in sized
    unsized = slurm.sbatch_args(ss, memory_bytes=0, **common)  # type: ignore[arg-type]
    assert "--mem-per-cpu=2G" in unsized and unsized[unsized.index("--mem-per-gpu") + 1] == "8G"
    assert not [a for a in unsized if a.startswith("--mem=")]


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ({}, slurm.Placement(gres="")),
        ({"slurm_partition": "p", "slurm_partition_gpu": "pg", "slurm_account": "a",
          "slurm_account_gpu": "ag", "slurm_constraint": "avx2", "gpuCount": 2},
         slurm.Placement("p", "a", "avx2", "")),
        ({"gpu": True, "slurm_partition": "p", "slurm_partition_gpu": "pg", "slurm_account": "a"},
         slurm.Placement("pg", "a", "", "gpu:1")),
        ({"gpu": True, "slurm_account_gpu": "ag", "gpuCount": 2},
         slurm.Placement("", "ag", "", "gpu:2")),
        ({"gpu": True, "gpuType": "a100", "gpuCount": 4}, slurm.Placement(gres="gpu:a100:4")),
        ({"gpu": True, "gpuType": "v100"}, slurm.Placement(gres="gpu:v100:1")),
    ],
)  # fmt: skip
def test_placement_reads_miniwdl_slurm_runtime_keys(runtime: Dict[str, Any], expected: Any) -> None:
    """miniwdl-slurm's keys mean the same here: the _gpu variants and gpuCount/gpuType apply
    only to a task asking for GPUs; without either, a GPU task gets the site's gpu_gres."""
    assert slurm.placement(runtime, settings.SlurmSettings()) == expected


def test_a_task_placement_replaces_the_site_default_in_extra_args() -> None:
    """--partition/-p, --account/-A, --constraint/-C and --gres set by the task replace the same
    options in extra_args (either form); options the task does not set stay."""
    ss = settings.slurm_from_mapping(
        {"extra_args": "-p site --account=lab -C old --gres=gpu:1 --qos=q"}
    )
    place = slurm.Placement(partition="big", account="proj", constraint="", gres="gpu:a100:2")
    args = slurm.sbatch_args(
        ss, job_name="j", cpu=1, memory_bytes=0, time_minutes=0, placement=place, output="o",
        workdir="w", comment="c", command=CMD,
    )  # fmt: skip
    assert "--partition=big" in args and "--account=proj" in args
    assert "--gres=gpu:a100:2" in args and "--qos=q" in args
    assert "-C" in args and args[args.index("-C") + 1] == "old"  # not set by the task: kept
    assert not [a for a in args if a in ("-p", "site", "--account=lab", "--gres=gpu:1")]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"extra_args": "--mem=4G"}, "--mem is set by the backend"),
        ({"extra_args": "-c 4"}, "-c is set by the backend"),
        ({"extra_args": "--qos 'unclosed"}, "shell quoting"),
        ({"time_minutes": "-3"}, "expected a whole number"),
        ({"submit_timeout": "0"}, "positive number of seconds"),
        ({"extra_args": "--open-mode=truncate"}, "--open-mode is set by the backend"),
        ({"pending_timeout": "-1"}, "MINIWDL__PODMAN_ROOTLESS_SLURM__PENDING_TIMEOUT"),
    ],
)
def test_slurm_settings_refuse_conflicting_or_bad_values(raw: dict, expected: str) -> None:
    """Options the backend computes, bad quoting and bad numbers fail with the env var named."""
    with pytest.raises(errors.ConfigError) as exn:
        settings.slurm_from_mapping(raw)
    assert expected in str(exn.value)
    assert "MINIWDL__PODMAN_ROOTLESS_SLURM__" in str(exn.value)


def test_comment_round_trip_and_foreign_comments() -> None:
    """Our job comment names pid and host (and a per-submission token); other comments, and
    a malformed one, are not ours."""
    assert slurm.parse_comment(slurm.job_comment(42, "9876", "login1", "ab12")) == (
        42,
        "login1",
        "9876",
    )
    assert slurm.parse_comment("miniwdl-podman:42@login1") == (42, "login1", "")  # older form
    assert slurm.parse_comment("miniwdl-podman:42.x@h") is None
    assert slurm.parse_comment("something else") is None
    assert slurm.parse_comment("miniwdl-podman:x@h") is None


@pytest.mark.parametrize(
    ("said", "transient"),
    [
        ("sbatch: error: Batch job submission failed: Unable to contact slurm controller"
         " (connect failure)", True),
        ("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
         True),
        ("sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying", True),
        ("sbatch did not answer within 120 s", True),
        ("sbatch: error: Batch job submission failed: Requested node configuration is not"
         " available", False),
        ("sbatch: error: Batch job submission failed: Invalid account or account/partition"
         " combination specified", False),
        ("sbatch: error: invalid partition specified: nope", False),
    ],
)  # fmt: skip
def test_transient_sbatch_failures_are_told_from_refusals(said: str, transient: bool) -> None:
    """A controller that does not answer is worth retrying; a job Slurm refuses is not."""
    assert slurm.transient_submit_error(said) is transient


def test_only_a_lost_answer_is_searched_for_a_taken_job() -> None:
    """After a timeout the job may have been taken (look for it); after a connect failure the
    request never reached the controller."""
    assert slurm.submission_may_have_landed("Socket timed out on send/recv operation")
    assert slurm.submission_may_have_landed("sbatch did not answer within 120 s")
    assert not slurm.submission_may_have_landed(
        "Unable to contact slurm controller (connect failure)"
    )


def test_a_submission_finds_its_own_job_by_comment() -> None:
    """After a lost answer, the job carrying this submission's exact comment is found (not
    another of the same run's)."""
    mine = slurm.job_comment(7, "55", "h", "tok1")
    jobs = slurm.parse_squeue(
        f"30|PENDING|None||{slurm.job_comment(7, '55', 'h', 'tok0')}\n31|PENDING|None||{mine}\n"
    )
    assert slurm.job_with_comment(jobs, mine) == "31"
    assert slurm.job_with_comment(jobs, slurm.job_comment(7, "55", "h", "tok2")) is None


def test_parse_squeue_and_scontrol() -> None:
    """squeue's pipe-separated lines (comment may hold '|') and scontrol's Key=Value pairs."""
    jobs = slurm.parse_squeue("12|RUNNING|None|n1|miniwdl-podman:1@h\n13|TIMEOUT|TimeLimit||a|b\n")
    assert jobs["12"].state == "RUNNING" and not jobs["12"].terminal
    assert jobs["13"].terminal and jobs["13"].comment == "a|b"
    info = slurm.parse_scontrol("JobId=12 JobName=x JobState=OUT_OF_MEMORY Reason=OutOfMemory")
    assert info["JobState"] == "OUT_OF_MEMORY"


@pytest.mark.parametrize(
    ("state", "interrupted", "words"),
    [
        ("TIMEOUT", False, "time limit (7 min); raise runtime.time_minutes"),
        ("OUT_OF_MEMORY", False, "exceeding its memory (--mem 512 MiB"),
        ("NODE_FAIL", True, "its node failed"),
        ("BOOT_FAIL", True, "its node failed"),
        ("PREEMPTED", True, "preempted"),
        ("CANCELLED", True, "cancelled by someone else"),
    ],
)
def test_classify_slurm_kills(state: str, interrupted: bool, words: str) -> None:
    """Slurm's own kills get a message with the fix; the cluster's doing is Interrupted."""
    ans = slurm.classify(state, job_id="9", node="n1", memory_bytes=512 * 2**20, time_minutes=7)
    assert ans is not None
    assert words in ans[0] and "Slurm job 9 on n1" in ans[0]
    assert ans[1] is interrupted


def test_classify_leaves_the_task_exit_to_the_task() -> None:
    """COMPLETED/FAILED jobs are judged by the command's exit status."""
    for state in ("COMPLETED", "FAILED"):
        assert slurm.classify(state, job_id="1", node="", memory_bytes=0, time_minutes=0) is None


def test_explain_kill_in_slurm_terms() -> None:
    """Exit 137 or an OOM state names the job's --mem and the fix; other exits say nothing."""
    # the backend counts an OUT_OF_MEMORY job state as the container's OOM kill
    oom = exits.explain_kill(137, True, exits.MemoryContext(2**30, slurm_job="5"))
    assert oom and "ran out of memory" in oom and "--mem 1024 MiB" in oom
    killed = exits.explain_kill(137, False, exits.MemoryContext(0, slurm_job="5"))
    assert killed and "SIGKILL" in killed and "partition's default memory" in killed
    assert exits.explain_kill(1, False, exits.MemoryContext(0, slurm_job="5")) is None


def test_cluster_limits_from_sinfo() -> None:
    """The largest node's CPUs and memory (MB → bytes); no nodes → None."""
    assert slurm.cluster_limits("8 65536\n64+ 512000\n") == {"cpu": 64, "mem_bytes": 512000 * 2**20}
    assert slurm.cluster_limits("") is None


def test_plan_and_settings_travel_to_the_node_unchanged() -> None:
    """TaskPlan and Settings survive JSON; the node always gets a private service in the job,
    cgroupfs, and the node-local store."""
    plan = plan_mod.TaskPlan(
        run_id="r", task_dir="/t", try_counter=2, container_dir="/mnt/c",
        mounts=[Mount("/in", "/mnt/c/in", True), Mount("/t/work", "/mnt/c/work", False, "z")],
        image="img", env={"A": "1"}, limits={}, gpu=True, writable=["/t/work"],
    )  # fmt: skip
    assert plan_mod.TaskPlan.from_json(plan.to_json()) == plan
    s = settings.from_mapping({"service": "external", "socket": "/run/x.sock",
                               "service_args": '["--log-level=info"]'})  # fmt: skip
    assert protocol.settings_from_json(protocol.settings_to_json(s)) == s
    ns = settings.node_settings(s, "/tmp/st", "")
    assert ns.service == "private" and ns.socket == ""
    assert ns.service_args == ("--cgroup-manager=cgroupfs", "--root", "/tmp/st/root",
                               "--runroot", "/tmp/st/run", "--log-level=info")  # fmt: skip
    assert settings.node_settings(s, "", "").service_args == ("--cgroup-manager=cgroupfs",
                                                          "--log-level=info")  # fmt: skip


def test_node_errors_come_back_as_the_same_kind() -> None:
    """The node helper's error is raised on the login side as the same class, job named."""
    plan = plan_mod.TaskPlan(run_id="r", task_dir="/t", try_counter=1, container_dir="/c",
                           mounts=[], image="img")  # fmt: skip

    def back(kind: str) -> Exception:
        result = protocol.Result(node="n1", error=kind, message="m")
        return result.exception("on n1, Slurm job 7", plan.image)

    assert isinstance(back("image-pull"), errors.ImagePullFailed)
    assert isinstance(back("container"), errors.ContainerFailed)
    assert isinstance(back("podman-unavailable"), errors.PodmanUnavailable)
    assert isinstance(back("input"), Error.InputError)
    assert isinstance(back("interrupted"), Interrupted)
    other = protocol.Result(node="n1", error=protocol.UNEXPECTED, message="KeyError: 'x'")
    other_exn = other.exception("on n1, Slurm job 7", plan.image)
    assert type(other_exn) is errors.BackendError and "KeyError" in str(other_exn)
    assert "(on n1, Slurm job 7)" in str(back("container"))


def test_every_error_kind_crosses_as_itself() -> None:
    """Each of our error kinds leaves the node under its name and comes back as its class."""
    from miniwdl_podman.identity import IdentityError

    for exn in (errors.ImagePullFailed("img", "m"), errors.ContainerFailed("m"),
                errors.PodmanUnavailable("m"), errors.ConfigError("m"), IdentityError("m"),
                Error.InputError("m"), Interrupted("m"), protocol.ProtocolError("m")):  # fmt: skip
        kind = protocol.error_kind(exn)
        assert kind in protocol.ERROR_KINDS
        again = protocol.Result(node="n", error=kind, message="m").exception("here", "img")
        assert type(again) is type(exn), kind
    assert protocol.error_kind(KeyError("x")) == ""


def test_files_of_another_version_are_refused_naming_both(tmp_path: Any) -> None:
    """A job file of another format, or with a field this version does not know, is refused
    with a message naming the version that wrote it and this one; so is such a result."""
    import json

    plan = plan_mod.TaskPlan(run_id="r", task_dir="/t", try_counter=1, container_dir="/c",
                             mounts=[], image="img")  # fmt: skip
    files = protocol.write_job(str(tmp_path / "try1"), plan, settings.Settings())
    job = protocol.read_job(files["json"])
    assert job.plan == plan and job.result == files["result"]
    raw = json.loads(Path(files["json"]).read_text())
    newer = {"format": protocol.FORMAT + 1, "package": "9.9"}
    for change in (newer, {"plan": {**raw["plan"], "new": 1}}, {"later_field": True}):
        (tmp_path / "bad.json").write_text(json.dumps({**raw, **change}))
        with pytest.raises(protocol.ProtocolError) as info:
            protocol.read_job(str(tmp_path / "bad.json"))
        assert "install the same version of miniwdl_podman" in str(info.value)
        assert f"this node runs miniwdl_podman {__version__}" in str(info.value)
    assert f"written by miniwdl_podman 9.9 (format {protocol.FORMAT + 1})" in _refusal(
        tmp_path, {**raw, **newer}
    )
    ran = protocol.Result(node="n", exit_code=0, image_id="ab" * 32, image_digest="sha256:cd")
    ran.write(files["result"])
    assert protocol.read_result(files["result"]) == ran  # the image the node ran comes back
    (tmp_path / "r.result").write_text(json.dumps({"format": 1, "node": "n", "extra": 1}))
    with pytest.raises(protocol.ProtocolError):
        protocol.read_result(str(tmp_path / "r.result"))
    assert protocol.read_result(str(tmp_path / "missing.result")) is None


def _refusal(tmp_path: Any, raw: Dict[str, Any]) -> str:
    import json

    (tmp_path / "v.json").write_text(json.dumps(raw))
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.read_job(str(tmp_path / "v.json"))
    return str(info.value)


def test_pending_verdict_fails_hopeless_reasons_at_once_and_others_after_the_timeout() -> None:
    """A reason Slurm never gets over fails at once, whatever the timeout; another only once
    it lasted pending_timeout seconds, and never with pending_timeout 0."""
    hopeless = slurm.pending_verdict("7", "PartitionTimeLimit", 0.0, 0.0)
    assert hopeless is not None and "never start" in hopeless and "job 7" in hopeless
    assert "time_minutes" in hopeless and "scontrol show partition" in hopeless
    assert slurm.pending_verdict("7", "Resources", 10**6, 0.0) is None
    assert slurm.pending_verdict("7", "JobHeldUser", 59.0, 60.0) is None
    late = slurm.pending_verdict("7", "JobHeldUser", 61.0, 60.0)
    assert late is not None and "JobHeldUser" in late and "pending_timeout" in late
    assert slurm.pending_verdict("7", "", 10**6, 60.0) is None  # no reason: about to start


def test_slurms_words_for_no_reason_are_no_reason() -> None:
    """'None' (about to be scheduled) and '(null)' are not reasons to log or to fail on."""
    assert [slurm.pending_reason(r) for r in ("None", "(null)", " ", "Resources ")] == [
        "", "", "", "Resources"
    ]  # fmt: skip


def test_node_paths_take_slurms_patterns_which_miniwdl_leaves_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """%j, %u, %N and %% become the node's job id, user, host and %; $VARs miniwdl left (unset
    on the login node) are expanded on the node; miniwdl's own loader keeps % as it is."""
    import logging

    from WDL.runtime import config

    env = {"SLURM_JOB_ID": "4242", "SCRATCH": "/scratch/u1"}
    got = settings.node_path("/tmp/mwp-%u-%j/%N/100%%", env, user="u1", host="n7")
    assert got == "/tmp/mwp-u1-4242/n7/100%"
    monkeypatch.setenv("SCRATCH", "/scratch/u1")
    assert settings.node_path("$SCRATCH/%j", {"SLURM_JOB_ID": "7"}, "u", "h") == "/scratch/u1/7"
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("MINIWDL__PODMAN_ROOTLESS_SLURM__NODE_STORAGE", "/tmp/s-%u-%j")
    loaded = settings.load_slurm(config.Loader(logging.getLogger("t"), []))
    assert loaded.node_storage == "/tmp/s-%u-%j"  # what the login side sends to the node


def test_a_lone_percent_in_a_config_file_is_a_clear_error_and_double_percent_works(
    tmp_path: Path,
) -> None:
    """miniwdl's loader interpolates % in config files: a lone % is a ConfigError naming the
    %% form (no traceback); %%u-%%j reads as %u-%j, for the node to expand."""
    import logging

    from WDL.runtime import config

    bad = tmp_path / "bad.cfg"
    bad.write_text("[podman_rootless_slurm]\nnode_storage = /tmp/mwp-%u-%j\n")
    with pytest.raises(errors.ConfigError) as exn:
        settings.load_slurm(config.Loader(logging.getLogger("t"), [str(bad)]))
    assert "write each % as %%" in str(exn.value)
    good = tmp_path / "good.cfg"
    good.write_text("[podman_rootless_slurm]\nnode_storage = /tmp/mwp-%%u-%%j\n")
    loaded = settings.load_slurm(config.Loader(logging.getLogger("t"), [str(good)]))
    assert loaded.node_storage == "/tmp/mwp-%u-%j"


def test_sacct_output_gives_the_final_state_and_the_steps_peak() -> None:
    """sacct's allocation line gives the state (without "by UID"), exit code, node and
    TotalCPU; the steps' largest MaxRSS is the job's; a job not listed is None."""
    text = (
        "417|CANCELLED by 1001|0:15|vm||01:02.500\n"
        "417.batch|CANCELLED|0:15|vm|10240K|00:01.250\n"
        "417.extern|COMPLETED|0:0|vm|1.5M|00:00.001\n"
    )
    acct = slurm.parse_sacct(text, "417")
    assert acct == slurm.Accounting("CANCELLED", "0:15", "vm", 10 << 20, 62.5)
    assert slurm.parse_sacct(text, "41") is None
    assert slurm.parse_sacct("", "417") is None


def test_slurm_sizes_and_durations() -> None:
    """sacct's sizes (K/M/G suffixes, bare bytes) and durations ([DD-][HH:]MM:SS[.mmm])."""
    assert slurm.slurm_size("2G") == 2 << 30 and slurm.slurm_size("512") == 512
    assert slurm.slurm_size("") is None and slurm.slurm_size("lots") is None
    assert slurm.slurm_duration("1-02:03:04") == 86400 + 2 * 3600 + 3 * 60 + 4
    assert slurm.slurm_duration("00:01.250") == 1.25
    assert slurm.slurm_duration("") is None


def test_a_job_squeue_forgot_ends_with_the_state_sacct_recorded() -> None:
    """A watched job squeue stops listing (MinJobAge) ends, after three misses, with the state
    Slurm's accounting recorded, or UNKNOWN without accounting; both are terminal."""
    import logging
    import time

    class Forgetful:
        def __init__(self, recorded: Optional[slurm.Accounting]) -> None:
            self.recorded = recorded
            self.asked = 0

        def states(self, _jobs: Any) -> Dict[str, slurm.JobState]:
            return {}

        def accounting(self, _job_id: str) -> Optional[slurm.Accounting]:
            self.asked += 1
            return self.recorded

        recorded_end = slurm.Slurm.recorded_end  # the real reading of accounting

    for recorded, expected in ((slurm.Accounting("FAILED"), "FAILED"), (None, "UNKNOWN")):
        fake = Forgetful(recorded)
        watcher = slurm.JobWatcher(fake, 0.01, logging.getLogger("test"))  # type: ignore[arg-type]
        watcher.watch("7")
        deadline = time.monotonic() + 10
        while (st := watcher.state("7")) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert st is not None and st.state == expected and st.terminal
        assert watcher.state("7") == st
        assert fake.asked == 1 or recorded is None
