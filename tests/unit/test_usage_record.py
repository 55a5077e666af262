"""The per-attempt usage record's file (no Podman needed)."""

from __future__ import annotations

import json
from pathlib import Path

from miniwdl_podman import __version__, usage_record


def test_a_record_is_written_beside_the_task_log_with_its_format(tmp_path: Path) -> None:
    """usage.N.json, N the attempt: the format and package version, every field, the
    attempt's total seconds; nulls where nothing is known."""
    record = usage_record.AttemptRecord("podman_rootless", "call-x", 2, started=100.0,
                                        requested={"cpu": 2, "gpu": False})  # fmt: skip
    record.seconds["waiting"] = 0.5
    path = record.write(str(tmp_path), ended=103.25)
    assert path == str(tmp_path / "usage.2.json")
    data = json.loads(Path(path).read_text())
    assert (data["format"], data["package"], data["attempt"]) == (1, __version__, 2)
    assert data["seconds"] == {"waiting": 0.5, "image": None, "container": None, "total": 3.25}
    assert data["retry_reason"] is None
    assert data["exit_code"] is None and data["slurm"] is None and data["requested"]["cpu"] == 2
