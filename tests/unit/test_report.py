"""The run report's aggregation and page, from recorded usage records (no Podman)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict

import pytest

from miniwdl_podman import cli, report, report_html

GIB, MIB = 1 << 30, 1 << 20


def _record(task_dir: Path, attempt: int, started: float, container: float, **kw: Any) -> None:
    rec: Dict[str, Any] = {
        "format": 1, "backend": "podman_rootless", "run_id": task_dir.name, "attempt": attempt,
        "started": started, "ended": started + container + 1.0,
        "requested": {"cpu": kw.pop("cpu", None), "memory_bytes": kw.pop("mem", None),
                      "memory_limit_bytes": None, "gpu": False},
        "image": "quay.io/x/tool:1", "image_id": "ab" * 32, "image_digest": None,
        "seconds": {"waiting": 0.5, "image": 0.5, "container": container,
                    "total": container + 1.0},
        "exit_code": 0, "oom_killed": False, "peak_rss_bytes": None, "cpu_seconds": None,
        "samples": 3, "error": None, "slurm": None, "retry_reason": None,
    }  # fmt: skip
    rec.update(kw)
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "task.log").write_text("2026-12-05 10:00:00.000 wdl.w:t NOTICE task setup\n")
    (task_dir / f"usage.{attempt}.json").write_text(json.dumps(rec))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run: an over-asker, a task retried after an OOM kill, one in a sub-workflow, one still
    running (no record yet), and a work directory that must not be walked."""
    run = tmp_path / "20261205_100000_w"
    run.mkdir()
    (run / "workflow.log").write_text("")
    _record(run / "call-big", 1, 1000.0, 100.0, cpu=2, mem=8 * GIB,
            peak_rss_bytes=512 * MIB, cpu_seconds=50.0)  # fmt: skip
    _record(run / "call-tight", 1, 1010.0, 20.0, cpu=1, mem=GIB, peak_rss_bytes=GIB,
            exit_code=137, oom_killed=True)  # fmt: skip
    _record(run / "call-tight", 2, 1040.0, 30.0, cpu=1, mem=2 * GIB,
            peak_rss_bytes=1800 * MIB, cpu_seconds=29.0, retry_reason="out of memory")  # fmt: skip
    _record(run / "call-sub" / "call-inner", 1, 1005.0, 10.0, cpu=4,
            peak_rss_bytes=64 * MIB, cpu_seconds=5.0)  # fmt: skip
    (run / "call-big" / "work" / "call-decoy").mkdir(parents=True)
    (run / "call-big" / "work" / "call-decoy" / "usage.1.json").write_text("{}")
    running = run / "call-slow"
    running.mkdir()
    (running / "task.log").write_text("2026-12-05 10:01:00.500 wdl.w:t NOTICE task setup\n")
    return run


def test_a_task_that_failed_before_its_container_is_a_failed_attempt(tmp_path: Path) -> None:
    """A task log with an error and no record (the backend could not start): a failed attempt
    naming the error, not a running one."""
    task = tmp_path / "run" / "call-x"
    task.mkdir(parents=True)
    (task / "task.log").write_text(
        "2026-12-05 10:01:00.500 wdl.w:x NOTICE task setup\n"
        "2026-12-05 10:01:01.000 wdl.w:x ERROR task x (call-x) failed :: error: PodmanUnavailable\n"
    )
    (attempt,) = report.gather(str(tmp_path / "run"))
    assert attempt.state == "failed" and "PodmanUnavailable" in attempt.error


def test_gather_finds_every_attempt_and_the_running_task(run_dir: Path) -> None:
    """Every recorded attempt (sub-workflows included, work/ left alone) and a task begun
    without a record, in order of start."""
    attempts = report.gather(str(run_dir))
    assert [(a.task, a.attempt, a.state) for a in attempts] == [
        ("call-big", 1, "ok"), ("call-sub/call-inner", 1, "ok"), ("call-tight", 1, "oom"),
        ("call-tight", 2, "ok"), ("call-slow", 1, "running"),
    ]  # fmt: skip


def test_summary_adds_up_usage_and_names_the_over_askers(run_dir: Path) -> None:
    """Tasks, attempts, failures, CPU-hours used and reserved (1 CPU when runtime.cpu is not
    set), the worst over-asker, the task closest to its memory and the OOM kill."""
    attempts = report.gather(str(run_dir))
    s = report.summarize(str(run_dir), attempts, now=2000.0)
    assert (s.tasks, s.attempts, s.failed_attempts, s.running) == (4, 4, 1, 1)
    assert s.failed_tasks == [] and s.oom == ["call-tight"] and not s.finished
    assert s.cpu_hours_used == pytest.approx((50 + 29 + 5) / 3600)
    assert s.cpu_hours_reserved == pytest.approx((2 * 100 + 20 + 30 + 4 * 10) / 3600)
    assert s.over_askers[0] == ("call-big", 8 * GIB, 512 * MIB)
    assert s.near_limit[0] == ("call-tight", pytest.approx(1800 / 2048))
    assert s.end == 2000.0 and s.start == 1000.0  # still running: up to now
    line = report.log_line(s)
    assert line["worst_over_asker"] == "call-big (asked 8.0 GiB, peak 512.0 MiB)"
    assert line["report"] == f"miniwdl-podman report {run_dir}"


def test_efficiency_and_memory_use_per_attempt(run_dir: Path) -> None:
    """CPU efficiency is CPU seconds over reserved CPUs times run seconds; memory use is peak
    over what was asked; unknown stays unknown."""
    by = {(a.task, a.attempt): a for a in report.gather(str(run_dir))}
    assert by[("call-big", 1)].cpu_efficiency == pytest.approx(0.25)
    assert by[("call-big", 1)].memory_use == pytest.approx(1 / 16)
    assert by[("call-tight", 1)].cpu_efficiency is None
    assert by[("call-sub/call-inner", 1)].memory_use is None  # asked for no memory


def test_tsv_has_one_row_per_attempt_with_every_column(run_dir: Path, tmp_path: Path) -> None:
    """One header and one row per attempt (the running one included), every column filled or
    empty, never shifted."""
    out = tmp_path / "r.tsv"
    report.write_tsv(str(out), report.gather(str(run_dir)))
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == list(report.TSV_COLUMNS)
    rows = [ln.split("\t") for ln in lines[1:]]
    assert len(rows) == 5 and all(len(r) == len(report.TSV_COLUMNS) for r in rows)
    tight2 = next(r for r in rows if r[0] == "call-tight" and r[1] == "2")
    col = report.TSV_COLUMNS.index
    assert tight2[col("retry_reason")] == "out of memory"
    assert tight2[col("peak_rss_bytes")] == str(1800 * MIB)


def _cards(page: str) -> Dict[str, str]:
    return dict(re.findall(r'class="card" data-k="([^"]+)" data-v="([^"]*)"', page))


def test_the_page_is_self_contained_and_shows_the_numbers(run_dir: Path) -> None:
    """The page loads nothing from elsewhere; its summary shows the summary's numbers; each
    plot and the table are there, with a row per attempt."""
    attempts = report.gather(str(run_dir))
    s = report.summarize(str(run_dir), attempts, now=2000.0)
    page = report_html.page(s, attempts)
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "@import" not in page
    cards = _cards(page)
    assert cards["tasks"] == "4" and cards["attempts"] == "4" and cards["running"] == "1"
    assert cards["most memory asked"] == str(8 * GIB) and cards["peak memory"] == str(1800 * MIB)
    assert float(cards["CPU-hours used"]) == pytest.approx(s.cpu_hours_used, abs=1e-6)
    for pid in ("summary", "plot-memory", "plot-cpu", "plot-timeline", "tasks"):
        assert f'id="{pid}"' in page
    table = page[page.index('id="tasks"') :]
    assert table.count("<tr>") == 1 + 5
    assert page.count('class="running"') == 5  # one timeline bar per attempt


def test_text_from_the_run_is_escaped(tmp_path: Path) -> None:
    """A task name or error with markup in it is shown as text, never as markup."""
    run = tmp_path / "run"
    _record(run / "call-<i>x&y", 1, 1000.0, 1.0, error="<script>alert(1)</script>",
            exit_code=None)  # fmt: skip
    attempts = report.gather(str(run))
    page = report_html.page(report.summarize(str(run), attempts), attempts)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert "<i>x" not in page and "call-&lt;i&gt;x&amp;y" in page


def _cli(*args: str) -> int:
    return cli.main(["report", *args])


def test_the_command_writes_the_page_and_the_tsv(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`report RUN_DIR` writes RUN_DIR/report.html (or -o FILE) and --tsv FILE; a directory
    without records exits 1, one that does not exist 2, each saying why."""
    assert _cli(str(run_dir), "--tsv", str(tmp_path / "t.tsv")) == 0
    assert (run_dir / "report.html").is_file() and (tmp_path / "t.tsv").is_file()
    assert "4 tasks, 4 attempts (in progress)" in capsys.readouterr().out
    assert _cli(str(run_dir), "-o", str(tmp_path / "x.html")) == 0
    assert (tmp_path / "x.html").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(str(empty)) == 1
    assert "no task of" in capsys.readouterr().err
    assert _cli(str(tmp_path / "nope")) == 2
    assert "is not a directory" in capsys.readouterr().err
