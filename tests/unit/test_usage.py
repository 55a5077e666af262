"""Per-task usage from /proc: parsing, accumulation, and a real process tree."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from miniwdl_podman import usage

STAT = "42 (ba sh (x)) S 7 42 42 0 -1 4194560 100 0 0 0 {u} {s} {cu} {cs} 20 0 1 0 {st} 0"


def _stat(u: int = 0, s: int = 0, cu: int = 0, cs: int = 0, st: int = 555) -> str:
    return STAT.format(u=u, s=s, cu=cu, cs=cs, st=st)


def test_parse_stat_handles_parentheses_in_the_command_name() -> None:
    """ppid, the four CPU tick fields summed, and the start time are read after the last ')'."""
    assert usage.parse_stat(_stat(1, 2, 30, 40)) == (7, 73, 555)


def test_parse_hwm_reads_kib_and_tolerates_its_absence() -> None:
    """VmHWM is reported in bytes; a status without it (zombie, kernel thread) gives 0."""
    assert usage.parse_hwm("Name:\tbash\nVmHWM:\t  2048 kB\nVmRSS:\t 1 kB\n") == 2 * 2**20
    assert usage.parse_hwm("Name:\tbash\nState:\tZ (zombie)\n") == 0


def _p(pid: int, ticks: int, peak: int, start: int = 1) -> usage.ProcSample:
    return usage.ProcSample(pid=pid, ppid=1, cpu_ticks=ticks, peak_rss=peak, start_ticks=start)


def test_tracker_counts_reaped_children_once_and_keeps_peaks_of_exited_processes() -> None:
    """CPU time is the largest tree total seen (a reaped child's ticks move into its parent);
    peak memory is the largest process peak, even after that process exited."""
    tracker = usage.UsageTracker()
    assert tracker.samples == 0 and tracker.peak_rss == 0
    tracker.add([_p(1, 5, 10), _p(2, 100, 500)])
    # child 2 exited and was reaped: its 100 ticks are now in the parent's cutime
    tracker.add([_p(1, 110, 10)])
    assert tracker.samples == 2
    assert tracker.cpu_seconds == pytest.approx(110 / usage._CLK_TCK)
    assert tracker.peak_rss == 500


def test_tracker_ignores_empty_samples_and_a_reused_root_pid() -> None:
    """After exit the tree is empty, and a new process with the old pid is not the task."""
    tracker = usage.UsageTracker()
    tracker.add([_p(1, 5, 10, start=100)])
    tracker.add([])
    tracker.add([_p(1, 9999, 99999, start=200)])
    assert tracker.samples == 1
    assert tracker.peak_rss == 10


def test_sample_tree_sees_a_live_child_and_its_memory() -> None:
    """A real child process that allocates 64 MiB and spins is found under its parent with
    at least that peak and some CPU time."""
    code = (
        # spins for 0.5 s of its own CPU time (not wall time: a loaded host gives it less)
        "import time\nb = bytearray(64 * 2**20)\n"
        "while time.process_time() < 0.5: pass\nprint('ok', flush=True)\ntime.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ok"
        procs = usage.sample_tree(os.getpid())
        mine = [p for p in procs if p.pid == child.pid]
        assert procs[0].pid == os.getpid()
        assert mine and mine[0].peak_rss >= 64 * 2**20
        assert mine[0].cpu_ticks >= 0.3 * usage._CLK_TCK
    finally:
        child.kill()
        child.wait()
