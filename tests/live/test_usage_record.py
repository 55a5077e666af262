"""The usage record of each task attempt, as a run leaves it (usage.N.json beside task.log)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from .conftest import BASE_IMAGE, REGISTRY, Miniwdl, podman

pytestmark = pytest.mark.podman

WDL = """
version 1.0
workflow w {
    input {
        String image
        Int code = 0
    }
    call t { input: image = image, code = code }
}
task t {
    input {
        String image
        Int code
    }
    command <<< sleep 1.5; exit ~{code} >>>
    runtime {
        docker: image
        cpu: 1
        memory: "64 MiB"
        maxRetries: 1
    }
}
"""


def records(run_dir: Path) -> List[Dict[str, Any]]:
    found = sorted({p.resolve() for p in run_dir.glob("*/call-t/usage.*.json")})
    return [json.loads(p.read_text()) for p in found]


def test_each_attempt_leaves_its_usage_record(miniwdl: Miniwdl) -> None:
    """A successful attempt's record: format, backend, attempt, the image run (id and digest
    as the task log names them), what was asked for, usage sampled, where the time went."""
    res = miniwdl.run(WDL, f"image={BASE_IMAGE}")
    assert res.returncode == 0, res.stderr[-3000:]
    (rec,) = records(res.run_dir)
    assert (rec["format"], rec["backend"], rec["attempt"]) == (1, "podman_rootless", 1)
    image_id, digest = podman("image", "inspect", "--format", "{{.Id}} {{.Digest}}",
                              BASE_IMAGE).stdout.split()  # fmt: skip
    assert (rec["image"], rec["image_id"], rec["image_digest"]) == (BASE_IMAGE, image_id, digest)
    assert rec["requested"] == {"cpu": 1, "memory_bytes": 64 << 20,
                                "memory_limit_bytes": None, "gpu": False}  # fmt: skip
    assert rec["exit_code"] == 0 and rec["oom_killed"] is False and rec["error"] is None
    assert rec["samples"] >= 1 and rec["peak_rss_bytes"] > 0
    seconds = rec["seconds"]
    assert seconds["waiting"] >= 0 and 1.5 <= seconds["container"] <= seconds["total"]
    assert 0 <= seconds["image"] < seconds["total"]
    assert rec["started"] < rec["ended"] and rec["retry_reason"] is None


def test_a_failed_command_and_its_retry_each_leave_a_record(miniwdl: Miniwdl) -> None:
    """A command that fails (exit 3) under maxRetries 1: usage.1.json and usage.2.json, each
    with the exit status; the retry's record says why it was retried."""
    res = miniwdl.run(WDL, f"image={BASE_IMAGE}", "code=3",
                      env={"MINIWDL__PODMAN_ROOTLESS__RETRY_WAIT": "0"})  # fmt: skip
    assert res.returncode != 0
    recs = records(res.run_dir)
    assert [(r["attempt"], r["exit_code"]) for r in recs] == [(1, 3), (2, 3)]
    assert [r["retry_reason"] for r in recs] == [None, "exit status 3"]


def test_an_attempt_ended_by_an_error_records_it(miniwdl: Miniwdl) -> None:
    """An image that cannot be pulled: the record has no exit status and names the error."""
    missing = f"{REGISTRY}/miniwdl-podman-test/no-such-image:1"
    res = miniwdl.run(WDL, f"image={missing}", env={"MINIWDL__PODMAN_ROOTLESS__RETRY_WAIT": "0"})
    assert res.returncode != 0
    recs = records(res.run_dir)
    assert recs and all(r["exit_code"] is None for r in recs)
    assert all(r["error"].startswith("ImagePullFailed: ") and missing in r["error"] for r in recs)
    assert recs[0]["retry_reason"] is None
    assert all(r["retry_reason"].startswith("ImagePullFailed: ") for r in recs[1:])
