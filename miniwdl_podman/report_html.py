"""The run report as one self-contained HTML page (``miniwdl-podman report RUN_DIR``).

Everything is inline: the plots are SVG drawn here, the style a ``<style>`` element and the
table's sorting a few lines of ``<script>``; the page asks nothing of the network. Sections, each
with an ``id`` a test or a script can find: ``summary``, ``plot-memory`` (requested vs peak
memory per task), ``plot-cpu`` (CPU efficiency per task), ``plot-timeline`` (every attempt:
waiting, image, running), ``tasks`` (one row per attempt; numeric cells carry their value in
``data-v``). Pure string building from :mod:`~miniwdl_podman.report`'s values.
"""

from __future__ import annotations

import html
import time
from typing import List, Optional, Sequence, Tuple

from . import __version__
from .report import Attempt, Summary, last_attempts, size

MAX_ROWS = 400  # rows drawn in a plot (the table has every attempt)
_W = 960
_LABEL = 280
_ROW = 18
_COLORS = {"ok": "#2e7d32", "failed": "#c62828", "oom": "#6a1b9a", "running": "#1565c0"}

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#666}.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:130px}
.card b{display:block;font-size:20px}
table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{border-bottom:1px solid #eee;padding:3px 6px;text-align:right;white-space:nowrap}
th{cursor:pointer;background:#f6f6f6;position:sticky;top:0}th:first-child,td:first-child{text-align:left}
td.l{text-align:left}.ok{color:#2e7d32}.failed{color:#c62828}.oom{color:#6a1b9a}.running{color:#1565c0}
svg text{font:11px system-ui,sans-serif}ul{margin:4px 0}
"""

_SCRIPT = """
document.querySelectorAll('#tasks th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var down = th.dataset.dir !== 'down';
    th.dataset.dir = down ? 'down' : 'up';
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return down ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _secs(x: float) -> str:
    if x >= 3600:
        return f"{x / 3600:.1f} h"
    if x >= 60:
        return f"{x / 60:.1f} min"
    return f"{x:.1f} s"


def _last_attempts(attempts: Sequence[Attempt]) -> List[Attempt]:
    """Each task's last attempt, in task order (what the per-task plots show)."""
    return sorted(last_attempts(attempts).values(), key=lambda a: a.task)


def _svg(pid: str, title: str, height: int, body: List[str], note: str = "") -> str:
    return (
        f'<h2>{_e(title)}</h2>{note}<svg id="{pid}" xmlns="http://www.w3.org/2000/svg"'
        f' width="{_W}" height="{height}" viewBox="0 0 {_W} {height}" role="img"'
        f' aria-label="{_e(title)}">' + "".join(body) + "</svg>"
    )


def _label(y: float, text: str) -> str:
    short = text if len(text) <= 44 else "…" + text[-43:]
    return (
        f'<text x="{_LABEL - 6}" y="{y + 12}" text-anchor="end">'
        f"<title>{_e(text)}</title>{_e(short)}</text>"
    )


def _cut_note(n: int) -> str:
    return f'<p class="muted">first {MAX_ROWS} of {n} shown</p>' if n > MAX_ROWS else ""


def memory_plot(attempts: Sequence[Attempt]) -> str:
    """Per task (its last attempt): memory asked for (light bar) and peak RSS (dark bar)."""
    tasks = [a for a in _last_attempts(attempts) if a.peak_rss is not None or a.memory_requested]
    shown = tasks[:MAX_ROWS]
    top = max([a.memory_requested or 0 for a in shown] + [a.peak_rss or 0 for a in shown] + [1])
    scale = (_W - _LABEL - 150) / top
    body = []
    for i, a in enumerate(shown):
        y = 24 + i * _ROW
        asked, peak = a.memory_requested or 0, a.peak_rss or 0
        body.append(_label(y, a.task))
        body.append(
            f'<rect class="asked" x="{_LABEL}" y="{y + 1}" width="{asked * scale:.1f}" height="14"'
            f' fill="#c5cae9" data-v="{asked}">'
            f"<title>asked {_e(size(asked or None))}</title></rect>"
        )
        body.append(
            f'<rect class="peak" x="{_LABEL}" y="{y + 4}" width="{max(1.0, peak * scale):.1f}"'
            f' height="8" fill="#283593" data-v="{peak}">'
            f"<title>peak {_e(size(peak))}</title></rect>"
        )
        body.append(
            f'<text x="{_LABEL + max(asked, peak) * scale + 4:.1f}" y="{y + 12}">'
            f"{_e(size(peak))} / {_e(size(a.memory_requested))}</text>"
        )
    legend = (
        '<rect x="0" y="4" width="12" height="12" fill="#c5cae9"/><text x="16" y="14">asked'
        ' (runtime.memory)</text><rect x="190" y="7" width="12" height="6" fill="#283593"/>'
        '<text x="206" y="14">peak RSS</text>'
    )
    height = 30 + len(shown) * _ROW
    return _svg("plot-memory", "Memory: asked for vs peak, per task", height, [legend, *body],
                _cut_note(len(tasks)))  # fmt: skip


def cpu_plot(attempts: Sequence[Attempt]) -> str:
    """Per task (its last attempt): CPU seconds over CPU seconds reserved, 100% marked."""
    tasks = [a for a in _last_attempts(attempts) if a.cpu_efficiency is not None]
    shown = tasks[:MAX_ROWS]
    top = max([a.cpu_efficiency or 0.0 for a in shown] + [1.0])
    scale = (_W - _LABEL - 70) / top
    body = []
    for i, a in enumerate(shown):
        y = 24 + i * _ROW
        eff = a.cpu_efficiency or 0.0
        body.append(_label(y, a.task))
        body.append(
            f'<rect class="eff" x="{_LABEL}" y="{y + 2}" width="{max(1.0, eff * scale):.1f}"'
            f' height="12" fill="{"#ef6c00" if eff > 1.05 else "#00838f"}" data-v="{eff:.4f}">'
            f"<title>{a.cpu_seconds:.1f} CPU s of {a.cpu_reserved} CPU for"
            f" {a.seconds('container'):.1f} s</title></rect>"
        )
        body.append(f'<text x="{_LABEL + eff * scale + 4:.1f}" y="{y + 12}">{_pct(eff)}</text>')
    height = 30 + len(shown) * _ROW
    full = _LABEL + scale
    body.append(
        f'<line x1="{full:.1f}" x2="{full:.1f}" y1="18" y2="{height}" stroke="#999"'
        ' stroke-dasharray="3,3"/>'
        f'<text x="{full:.1f}" y="14" text-anchor="middle">100% of runtime.cpu</text>'
    )
    return _svg("plot-cpu", "CPU efficiency per task (CPU seconds / reserved)", height, body,
                _cut_note(len(tasks)))  # fmt: skip


def timeline_plot(attempts: Sequence[Attempt], summary: Summary) -> str:
    """Every attempt on one time axis: waiting for resources (grey), getting its image (amber),
    its container running (colored by how it ended)."""
    shown = list(attempts)[:MAX_ROWS]
    span = max(summary.wall_seconds, 1e-3)
    scale = (_W - _LABEL - 20) / span
    body = []
    for i, a in enumerate(shown):
        y = 24 + i * _ROW
        x = _LABEL + (a.started - summary.start) * scale
        end = a.ended if a.ended is not None else summary.end
        total = max(0.0, end - a.started)
        wait, image = a.seconds("waiting"), a.seconds("image")
        run = a.seconds("container") if not a.running else max(0.0, total - wait - image)
        body.append(_label(y, f"{a.task} #{a.attempt}"))
        parts: List[Tuple[str, float, str]] = [
            ("waiting", wait, "#bdbdbd"), ("image", image, "#ffb300"),
            ("running", run, _COLORS[a.state]),
        ]  # fmt: skip
        for name, secs, color in parts:
            if secs <= 0 and name != "running":
                continue
            w = max(1.0, secs * scale)
            body.append(
                f'<rect class="{name}" x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="12"'
                f' fill="{color}" data-v="{secs:.3f}"><title>{_e(a.task)} #{a.attempt}: {name}'
                f" {secs:.1f} s</title></rect>"
            )
            x += secs * scale
    axis_y = 30 + len(shown) * _ROW
    body.append(
        f'<line x1="{_LABEL}" x2="{_W - 20}" y1="{axis_y - 4}" y2="{axis_y - 4}" stroke="#999"/>'
    )
    for k in range(5):
        t = span * k / 4
        body.append(f'<text x="{_LABEL + t * scale:.1f}" y="{axis_y + 10}" text-anchor="middle">'
                    f"{_e(_secs(t))}</text>")  # fmt: skip
    legend = "".join(
        f'<rect x="{i * 110}" y="4" width="12" height="12" fill="{c}"/>'
        f'<text x="{i * 110 + 16}" y="14">{n}</text>'
        for i, (n, c) in enumerate([("waiting", "#bdbdbd"), ("image", "#ffb300"),
                                    ("ran: ok", _COLORS["ok"]), ("failed", _COLORS["failed"]),
                                    ("out of memory", _COLORS["oom"]),
                                    ("running", _COLORS["running"])])
    )  # fmt: skip
    return _svg("plot-timeline", "Timeline of every attempt", axis_y + 16, [legend, *body],
                _cut_note(len(attempts)))  # fmt: skip


def _cell(text: str, value: object = None, cls: str = "", title: str = "") -> str:
    v = text if value is None else value
    c = f' class="{cls}"' if cls else ""
    t = f' title="{_e(title)}"' if title else ""
    return f'<td{c}{t} data-v="{_e(v)}">{_e(text)}</td>'


def table(attempts: Sequence[Attempt]) -> str:
    head = ("task", "attempt", "state", "node", "image", "cpu", "cpu efficiency", "memory asked",
            "peak memory", "memory use", "waiting s", "image s", "running s", "total s",
            "exit", "error")  # fmt: skip
    rows = []
    for a in attempts:
        image = str(a.record.get("image") or "")
        rows.append(
            "<tr>"
            + _cell(a.task, cls="l")
            + _cell(str(a.attempt), a.attempt)
            + _cell(
                a.state,
                cls=f"l {a.state}",
                title=a.error or str(a.record.get("retry_reason") or ""),
            )
            + _cell(a.node or "-", cls="l")
            + _cell(image.rsplit("/", 1)[-1] or "-", image, cls="l")
            + _cell(str(a.cpu_reserved), a.cpu_reserved)
            + _cell(
                _pct(a.cpu_efficiency),
                -1 if a.cpu_efficiency is None else round(a.cpu_efficiency, 4),
            )
            + _cell(size(a.memory_requested), a.memory_requested or 0)
            + _cell(size(a.peak_rss), -1 if a.peak_rss is None else a.peak_rss)
            + _cell(_pct(a.memory_use), -1 if a.memory_use is None else round(a.memory_use, 4))
            + _cell(f"{a.seconds('waiting'):.1f}", a.seconds("waiting"))
            + _cell(f"{a.seconds('image'):.1f}", a.seconds("image"))
            + _cell(f"{a.seconds('container'):.1f}", a.seconds("container"))
            + _cell(f"{a.seconds('total'):.1f}", a.seconds("total"))
            + _cell(
                "-" if a.exit_code is None else str(a.exit_code),
                -1 if a.exit_code is None else a.exit_code,
            )
            + _cell(a.error[:120], a.error, cls="l", title=a.error)
            + "</tr>"
        )
    return (
        '<h2>Every attempt</h2><p class="muted">click a column to sort</p>'
        '<table id="tasks"><thead><tr>'
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def summary_section(s: Summary) -> str:
    state = "finished" if s.finished else ("in progress" if s.running else "did not finish")
    cards = [
        ("tasks", str(s.tasks), s.tasks), ("attempts", str(s.attempts), s.attempts),
        ("failed attempts", str(s.failed_attempts), s.failed_attempts),
        ("running", str(s.running), s.running),
        ("wall time", _secs(s.wall_seconds), round(s.wall_seconds, 3)),
        ("CPU-hours used", f"{s.cpu_hours_used:.3f}", round(s.cpu_hours_used, 6)),
        ("CPU-hours reserved", f"{s.cpu_hours_reserved:.3f}", round(s.cpu_hours_reserved, 6)),
        ("CPU efficiency", _pct(s.cpu_efficiency), s.cpu_efficiency),
        ("peak memory", size(s.peak_rss), s.peak_rss),
        ("most memory asked", size(s.memory_asked or None), s.memory_asked),
    ]  # fmt: skip
    parts = [
        f'<div class="card" data-k="{_e(k)}" data-v="{_e(v)}">{_e(k)}<b>{_e(t)}</b></div>'
        for k, t, v in cards
    ]
    lists = []
    if s.over_askers:
        lists.append("<h3>Asked for the most memory they did not use</h3><ul>" + "".join(
            f"<li>{_e(t)}: asked {_e(size(asked))}, peak {_e(size(peak))}</li>"
            for t, asked, peak in s.over_askers) + "</ul>")  # fmt: skip
    if s.near_limit:
        lists.append("<h3>Came closest to their memory</h3><ul>" + "".join(
            f"<li>{_e(t)}: peak {_e(_pct(use))} of what it asked</li>"
            for t, use in s.near_limit) + "</ul>")  # fmt: skip
    if s.oom:
        lists.append("<h3>Killed for memory</h3><ul>"
                     + "".join(f"<li>{_e(t)}</li>" for t in s.oom) + "</ul>")  # fmt: skip
    if s.failed_tasks:
        lists.append("<h3>Failed tasks</h3><ul>"
                     + "".join(f"<li>{_e(t)}</li>" for t in s.failed_tasks) + "</ul>")  # fmt: skip
    return (
        f'<section id="summary" data-state="{_e(state)}"><h2>Summary: run {_e(state)}</h2>'
        f'<div class="cards">{"".join(parts)}</div>{"".join(lists)}</section>'
    )


def page(summary: Summary, attempts: Sequence[Attempt], now: Optional[float] = None) -> str:
    """The whole report page."""
    made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now or time.time()))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Run report: {_e(summary.run_dir)}</title><style>{_STYLE}</style></head><body>"
        f'<h1>Run report</h1><p class="muted">{_e(summary.run_dir)} · made {_e(made)} by'
        f" miniwdl-podman {_e(__version__)} from the tasks' usage records</p>"
        + summary_section(summary)
        + memory_plot(attempts)
        + cpu_plot(attempts)
        + timeline_plot(attempts, summary)
        + table(attempts)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )
