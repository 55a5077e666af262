"""The run report, live: a small scatter (one task over-asking memory) leaves its usage
records, the run's last log line sums them up, and the page `miniwdl-podman report` makes from
them renders in headless Chromium showing the records' numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from miniwdl_podman import report

from .browser import Browser
from .conftest import BASE_IMAGE, Miniwdl, RunResult

pytestmark = pytest.mark.podman

MIB = 1 << 20
SCATTER_WDL = """
version 1.0
workflow w {
    input { String image }
    scatter (i in range(3)) {
        call t { input: image = image, i = i, mem = if i == 0 then "512 MiB" else "64 MiB" }
    }
}
task t {
    input {
        String image
        Int i
        String mem
    }
    command <<< sleep 1.5; echo ~{i} >>>
    output { Int out = read_int(stdout()) }
    runtime {
        docker: image
        cpu: 1
        memory: mem
    }
}
"""


def _records(run: RunResult) -> Dict[str, Dict[str, Any]]:
    """Task directory name → its usage record (the run's only attempts)."""
    top = next(p for p in run.run_dir.iterdir() if p.is_dir() and not p.is_symlink())
    return {p.parent.name: json.loads(p.read_text()) for p in top.glob("call-*/usage.1.json")}


def _run(miniwdl: Miniwdl) -> RunResult:
    res = miniwdl.run(SCATTER_WDL, f"image={BASE_IMAGE}")
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _report(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "miniwdl_podman", "report", str(run_dir), *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_a_scatter_leaves_records_that_the_report_adds_up(miniwdl: Miniwdl, tmp_path: Path) -> None:
    """Each task's record has what it asked for and used; the run ends with one line naming
    the over-asker and the report command; the TSV has a row per attempt."""
    res = _run(miniwdl)
    recs = _records(res)
    assert len(recs) == 3
    asked = {t: r["requested"]["memory_bytes"] for t, r in recs.items()}
    (over,) = [t for t, m in asked.items() if m == 512 * MIB]
    assert sorted(asked.values()) == [64 * MIB, 64 * MIB, 512 * MIB]
    assert all(r["samples"] >= 1 and 0 < r["peak_rss_bytes"] < 64 * MIB for r in recs.values())
    line = [ln for ln in res.stderr.splitlines() if "run usage ::" in ln]
    assert len(line) == 1, res.stderr[-2000:]
    assert "tasks: 3" in line[0] and f'worst_over_asker: "{over} (asked 512.0 MiB' in line[0]
    top = next(p for p in res.run_dir.iterdir() if p.is_dir() and not p.is_symlink())
    assert f"miniwdl-podman report {top}" in line[0]
    assert (
        (top / "workflow.log").read_text().splitlines()[-1].endswith(line[0].split(" NOTICE ")[-1])
    )
    tsv = tmp_path / "run.tsv"
    out = _report(top, "--tsv", str(tsv))
    assert out.returncode == 0, out.stderr
    assert len(tsv.read_text().splitlines()) == 1 + 3


@pytest.mark.browser
def test_the_report_page_renders_in_chromium_with_the_records_numbers(
    miniwdl: Miniwdl, tmp_path: Path
) -> None:
    """Opened in headless Chromium, the page logs no error, each plot is drawn (its bars have
    a size), its cards and table show what the records say, a column sorts on a click; the
    screenshot is kept beside the test's output."""
    res = _run(miniwdl)
    recs = _records(res)
    top = next(p for p in res.run_dir.iterdir() if p.is_dir() and not p.is_symlink())
    page = tmp_path / "report.html"
    out = _report(top, "-o", str(page))
    assert out.returncode == 0, out.stderr
    used = sum(r["cpu_seconds"] for r in recs.values()) / 3600
    reserved = sum(r["requested"]["cpu"] * r["seconds"]["container"] for r in recs.values()) / 3600
    with Browser() as browser:
        browser.open(page)
        shot = Path(os.environ.get("MINIWDL_PODMAN_TEST_OUTPUT", tmp_path)) / "report.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        browser.screenshot(shot)
        print(f"report screenshot: {shot}")
        assert browser.errors() == []
        sizes: Dict[str, List[float]] = browser.evaluate(
            "Object.fromEntries(['summary','plot-memory','plot-cpu','plot-timeline','tasks']"
            ".map(id => { const r = document.getElementById(id).getBoundingClientRect();"
            " return [id, [r.width, r.height]]; }))"
        )
        assert all(w > 0 and h > 0 for w, h in sizes.values()), sizes
        bars = browser.evaluate(
            "Object.fromEntries(['#plot-memory rect.peak', '#plot-memory rect.asked',"
            " '#plot-cpu rect.eff', '#plot-timeline rect.running'].map(s => [s,"
            " [...document.querySelectorAll(s)].map(e => e.getBoundingClientRect().width)]))"
        )
        assert all(len(w) == 3 and min(w) > 0 for w in bars.values()), bars
        cards = browser.evaluate(
            "Object.fromEntries([...document.querySelectorAll('.card')].map(c =>"
            " [c.dataset.k, c.querySelector('b').textContent]))"
        )
        assert cards["tasks"] == "3" and cards["attempts"] == "3"
        assert cards["CPU-hours used"] == f"{used:.3f}"
        assert cards["CPU-hours reserved"] == f"{reserved:.3f}"
        assert cards["peak memory"] == report.size(max(r["peak_rss_bytes"] for r in recs.values()))
        column = "[...document.querySelectorAll('#tasks th')].findIndex(h => h.textContent == '%s')"
        peak_col = browser.evaluate(column % "peak memory")
        shown = browser.evaluate(
            f"[...document.querySelectorAll('#tasks tbody tr')].map(r => [r.cells[0].textContent,"
            f" Number(r.cells[{peak_col}].dataset.v)])"
        )
        assert dict(shown) == {t: r["peak_rss_bytes"] for t, r in recs.items()}
        browser.evaluate(f"document.querySelectorAll('#tasks th')[{peak_col}].click(), 0")
        after = browser.evaluate(
            f"[...document.querySelectorAll('#tasks tbody tr')].map(r =>"
            f" Number(r.cells[{peak_col}].dataset.v))"
        )
        assert after == sorted(after, reverse=True)
        assert browser.errors() == []
