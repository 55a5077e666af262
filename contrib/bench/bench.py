"""Benchmark: per-task overhead of podman_rootless vs. the raw CLI, raw podman-py and miniwdl's
built-in ``podman`` backend, all on the same host, image, storage, in one run.

Run as the unprivileged user whose rootless Podman works (``nox -s bench`` arranges it). Rows:

1. floor: ``podman run --rm --network none IMG true``, sequential
2. floor: podman-py create + start + wait (the backend's default interval) + remove, sequential;
   and the same in 16 loops at once (creates one at a time, as the backend sends them): the API's
   own throughput at concurrency 16, with no miniwdl in the way
3. podman_rootless: ``miniwdl run`` of a scatter of N ``true`` tasks at concurrency 1/4/16/64
4. miniwdl's built-in ``podman`` backend, rootless (``[podman] exe = ["podman"]``,
   ``[file_io] chown = false``), the same scatters
5. a scatter of 16 tasks each writing 1,000 files (ownership path), both backends
6. peak RSS of the miniwdl process at concurrency 64, both backends
7. start-up: a fresh ``miniwdl run`` of a one-task workflow, image local, no API socket
   running, default options; alternating pairs with the built-in backend: ours cold (no
   service, no facts kept: the run starts one and asks its ``/info``), restarted (the warm
   service had stopped: the run starts one, its facts kept from the last) and warm (the next
   run, which finds the service), the median ratio of the pairs
8. CPU-seconds of the whole machine (``/proc/stat``) per task: row 1, podman-py's 16 loops,
   and both backends' scatters at concurrency 16 (how close to the container machinery's own
   cost we are)

Prints one table (median and spread over the repetitions, ratios to rows 1 and 4) and writes it,
with the host facts, to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

REGISTRY = os.environ.get("MINIWDL_PODMAN_TEST_REGISTRY", "127.0.0.1:5000")
# the built-in backend always runs `podman pull`, so the image must come from a registry
IMAGE = f"{REGISTRY}/miniwdl-podman-test/pullme:2"

SCATTER_WDL = """
version 1.0
workflow bench {
    input {
        Int n
        Int files = 0
        String image
    }
    scatter (i in range(n)) {
        call t { input: files = files, image = image }
    }
}
task t {
    input {
        Int files
        String image
    }
    command <<<
        i=0
        while [ $i -lt ~{files} ]; do echo $i > f$i; i=$((i + 1)); done
    >>>
    runtime { docker: image }
}
"""


def podman_json(*args: str) -> Dict[str, object]:
    return dict(json.loads(subprocess.run(["podman", *args], capture_output=True, text=True,
                                          check=True).stdout))  # fmt: skip


def host_facts() -> Dict[str, str]:
    info = podman_json("info", "--format", "json")
    host = info["host"]
    store = info["store"]
    assert isinstance(host, dict) and isinstance(store, dict)
    return {
        "podman": str(info.get("version", {}).get("Version", "?")),  # type: ignore[attr-defined]
        "runtime": f"{host['ociRuntime']['name']} {host['ociRuntime'].get('version', '').split()[2] if len(host['ociRuntime'].get('version', '').split()) > 2 else ''}".strip(),  # noqa: E501
        "storage driver": str(store["graphDriverName"]),
        "cgroups": f"{host['cgroupVersion']} ({host.get('cgroupManager', '?')})",
        "default rootless network": str(host.get("rootlessNetworkCmd") or "slirp4netns"),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
    }


ONE_TASK_WDL = """
version 1.0
task t {
    input { String image }
    command <<< true >>>
    runtime { docker: image }
}
"""

API16 = "2. podman-py create+start+wait+remove, 16 loops at once"

# CPU-seconds the whole machine spent during the last measurement (rows 1 and 3/4)
LAST_CPU: Dict[str, float] = {}


def machine_cpu_seconds() -> float:
    """CPU time of the whole machine since boot (all CPUs, all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    cpu0 = machine_cpu_seconds()
    fn()
    LAST_CPU["seconds"] = machine_cpu_seconds() - cpu0
    return time.perf_counter() - t0


def cli_floor(n: int) -> float:
    def go() -> None:
        for _ in range(n):
            subprocess.run(["podman", "run", "--rm", "--network", "none", IMAGE, "true"],
                           check=True, capture_output=True)  # fmt: skip

    return timed(go) / n


def podmanpy_floor(n: int, threads: int = 1) -> float:
    """Seconds per container of podman-py alone: create, start, wait (the backend's default
    interval), remove, in ``threads`` loops at once; creates one at a time, as the backend sends
    them (with more than one thread: the API's own throughput at that concurrency, no miniwdl)."""
    from podman import PodmanClient

    from miniwdl_podman.engine import connection, services
    from miniwdl_podman.settings import Settings

    interval = Settings().wait_interval
    base = tempfile.mkdtemp(prefix="mwpb-", dir="/tmp")
    svc = services.PrivateService("podman", base)
    svc.start(connection.ping, 30)
    try:
        client = PodmanClient(base_url=svc.url)
        create_lock = threading.Lock()
        left = [n]

        def loop() -> None:
            while True:
                with create_lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                    c = client.containers.create(IMAGE, ["true"], network_mode="none")
                c.start()
                c.wait(interval=interval)
                c.remove(force=True)

        def go() -> None:
            workers = [threading.Thread(target=loop) for _ in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()

        return timed(go) / n
    finally:
        svc.stop()
        os.rmdir(base)


def _miniwdl_env(tmp: str, backend: str, extra: Dict[str, str]) -> Dict[str, str]:
    """The environment of a benchmarked ``miniwdl run`` (an empty config file in ``tmp``)."""
    cfg = Path(tmp) / "miniwdl.cfg"
    cfg.write_text("")
    return {
        **os.environ,
        "MINIWDL_CFG": str(cfg),
        "MINIWDL__SCHEDULER__CONTAINER_BACKEND": backend,
        "MINIWDL__CALL_CACHE__GET": "false",
        "MINIWDL__CALL_CACHE__PUT": "false",
        "MINIWDL__PODMAN_ROOTLESS__NETWORK": "none",
        "MINIWDL__PODMAN__EXE": '["podman"]',
        "MINIWDL__FILE_IO__CHOWN": "false",
        **extra,
    }


def miniwdl_scatter(
    backend: str, n: int, concurrency: int, files: int = 0, rss: bool = False
) -> Tuple[float, int]:
    """(wall seconds per task, peak RSS bytes of the miniwdl process or 0)."""
    with tempfile.TemporaryDirectory(prefix="mwpb-") as tmp:
        wdl = Path(tmp) / "bench.wdl"
        wdl.write_text(SCATTER_WDL)
        env = _miniwdl_env(tmp, backend, {"MINIWDL__SCHEDULER__TASK_CONCURRENCY": str(concurrency)})
        cmd = ["miniwdl", "run", str(wdl), f"n={n}", f"files={files}", f"image={IMAGE}",
               "--dir", tmp + "/run/"]  # fmt: skip
        peak = 0
        t0 = time.perf_counter()
        cpu0 = machine_cpu_seconds()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        if rss:

            def watch() -> None:
                nonlocal peak
                while proc.poll() is None:
                    try:
                        with open(f"/proc/{proc.pid}/status") as f:
                            for line in f:
                                if line.startswith("VmHWM:"):
                                    peak = max(peak, int(line.split()[1]) * 1024)
                    except OSError:
                        pass
                    time.sleep(0.05)

            watcher = threading.Thread(target=watch)
            watcher.start()
        _, err = proc.communicate()
        wall = time.perf_counter() - t0
        LAST_CPU["seconds"] = machine_cpu_seconds() - cpu0
        if rss:
            watcher.join()
        if proc.returncode != 0:
            raise RuntimeError(f"{backend} scatter failed: {err[-2000:]}")
        for bad in ("database is locked", "Connection pool is full"):
            if bad in err:
                raise RuntimeError(f"{backend} scatter logged {bad!r}")
        subprocess.run(["podman", "unshare", "rm", "-rf", tmp + "/run"], check=False)
        return wall / n, peak


def one_task_run(backend: str, runtime_dir: str) -> float:
    """Wall seconds of one fresh ``miniwdl run`` of a one-task workflow."""
    with tempfile.TemporaryDirectory(prefix="mwpb-") as tmp:
        wdl = Path(tmp) / "one.wdl"
        wdl.write_text(ONE_TASK_WDL)
        env = _miniwdl_env(
            tmp,
            backend,
            # the default service_idle: the first run starts a warm service, the next finds it
            {"MINIWDL__PODMAN_ROOTLESS__RUNTIME_DIR": runtime_dir},
        )
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["miniwdl", "run", str(wdl), f"image={IMAGE}", "--dir", tmp + "/run/"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{backend} one-task run failed: {proc.stderr[-2000:]}")
        subprocess.run(["podman", "unshare", "rm", "-rf", tmp + "/run"], check=False)
        return wall


def _stop_services_under(path: str) -> None:
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in ps.splitlines()[1:]:
        pid, _, cmd = line.strip().partition(" ")
        if path in cmd and "system service" in cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 15)


def _stop_services_and_wait(path: str) -> None:
    _stop_services_under(path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
        if not any(path in cmd and "system service" in cmd for cmd in ps.splitlines()):
            return
        time.sleep(0.05)


def one_task_pairs(pairs: int) -> Dict[str, List[float]]:
    """Alternating runs: built-in, and ours cold, restarted, warm (the order rotates each
    pair)."""
    ans: Dict[str, List[float]] = {"builtin": [], "cold": [], "restart": [], "warm": []}
    for i in range(pairs):
        runtime_dir = tempfile.mkdtemp(prefix="mwpb-rt-", dir="/tmp")
        try:
            order = ["builtin", "ours"] if i % 2 == 0 else ["ours", "builtin"]
            for which in order:
                if which == "builtin":
                    ans["builtin"].append(one_task_run("podman", runtime_dir))
                else:
                    ans["cold"].append(one_task_run("podman_rootless", runtime_dir))
                    _stop_services_and_wait(runtime_dir)
                    ans["restart"].append(one_task_run("podman_rootless", runtime_dir))
                    ans["warm"].append(one_task_run("podman_rootless", runtime_dir))
        finally:
            _stop_services_under(runtime_dir)
            time.sleep(0.5)
            subprocess.run(["rm", "-rf", runtime_dir], check=False)
    return ans


def summarise(samples: List[float]) -> Tuple[float, float]:
    med = statistics.median(samples)
    spread = (max(samples) - min(samples)) / 2 if len(samples) > 1 else 0.0
    return med, spread


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="scatter size")
    ap.add_argument("--floor-n", type=int, default=40, help="containers per floor measurement")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--out", default="", help="write docs/benchmarks.md for this lane alone")
    ap.add_argument("--json", default="", help="write the measurements as JSON (for combine)")
    ap.add_argument("--lane", default="host", help="the lane's name, a column of the document")
    ap.add_argument("--pairs", type=int, default=7, help="alternating pairs for row 7")
    ap.add_argument("--startup-only", action="store_true", help="row 7 alone (quick)")
    args = ap.parse_args(argv)
    subprocess.run(["podman", "pull", "-q", IMAGE], check=True, capture_output=True)
    facts = host_facts()
    print("host:", facts, flush=True)
    rows: List[Tuple[str, List[float], str]] = []  # (label, samples, kind)

    def measure(label: str, fn: Callable[[], float], kind: str = "s/task") -> List[float]:
        samples = []
        for _ in range(args.reps):
            samples.append(fn())
        rows.append((label, samples, kind))
        med, spread = summarise(samples)
        print(f"{label:60} {med:.4f} ± {spread:.4f} {kind}", flush=True)
        return samples

    cpu: Dict[str, List[float]] = {"cli": [], "api16": [], "ours": [], "builtin": []}

    def cli_row() -> float:
        ans = cli_floor(args.floor_n)
        cpu["cli"].append(LAST_CPU["seconds"] / args.floor_n)
        return ans

    if not args.startup_only:
        full_rows(args, measure, cli_row, cpu)
    startup_rows(args, rows, cpu)

    result = {"facts": facts, "reps": args.reps, "rows": [list(r) for r in rows]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    if args.out:
        write_doc(Path(args.out), [(args.lane, result)])
    return 0


def full_rows(
    args: argparse.Namespace,
    measure: Callable[..., List[float]],
    cli_row: Callable[[], float],
    cpu: Dict[str, List[float]],
) -> None:
    """Rows 1-6 (and the CPU samples of row 8)."""
    measure("1. CLI `podman run --rm --network none` (sequential)", cli_row)
    measure("2. podman-py create+start+wait+remove (sequential)",
            lambda: podmanpy_floor(args.floor_n))  # fmt: skip

    def api16() -> float:
        ans = podmanpy_floor(args.n, threads=16)
        cpu["api16"].append(LAST_CPU["seconds"] / args.n)
        return ans

    measure(API16, api16)
    ours: Dict[int, List[float]] = {}
    builtin: Dict[int, List[float]] = {}

    def scatter(backend: str, c: int) -> float:
        ans = miniwdl_scatter(backend, args.n, c)[0]
        if c == 16:
            cpu["ours" if backend == "podman_rootless" else "builtin"].append(
                LAST_CPU["seconds"] / args.n
            )
        return ans

    for c in [int(x) for x in args.concurrency.split(",")]:
        ours[c] = measure(f"3. podman_rootless, scatter {args.n}, concurrency {c}",
                          lambda c=c: scatter("podman_rootless", c))  # fmt: skip
        builtin[c] = measure(f"4. built-in podman, scatter {args.n}, concurrency {c}",
                             lambda c=c: scatter("podman", c))  # fmt: skip
    measure("5. podman_rootless, 16 tasks x 1,000 files, concurrency 16",
            lambda: miniwdl_scatter("podman_rootless", 16, 16, files=1000)[0])  # fmt: skip
    measure("5. built-in podman, 16 tasks x 1,000 files, concurrency 16",
            lambda: miniwdl_scatter("podman", 16, 16, files=1000)[0])  # fmt: skip
    top = max(ours)
    measure(
        f"6. podman_rootless, peak RSS of miniwdl at concurrency {top}",
        lambda: miniwdl_scatter("podman_rootless", args.n, top, rss=True)[1] / 2**20,
        "MiB",
    )
    measure(
        f"6. built-in podman, peak RSS of miniwdl at concurrency {top}",
        lambda: miniwdl_scatter("podman", args.n, top, rss=True)[1] / 2**20,
        "MiB",
    )


def startup_rows(
    args: argparse.Namespace,
    rows: List[Tuple[str, List[float], str]],
    cpu: Dict[str, List[float]],
) -> None:
    """Rows 7 and 8."""
    first = len(rows)
    runs = one_task_pairs(args.pairs)
    for label, key in (
        ("7. podman_rootless, one-task workflow, cold (starts a service, asks /info)", "cold"),
        ("7. podman_rootless, one-task workflow, restarted (starts one, facts kept)", "restart"),
        ("7. podman_rootless, one-task workflow, warm (finds the service)", "warm"),
        ("7. built-in podman, one-task workflow", "builtin"),
    ):
        rows.append((label, runs[key], "s/run"))
    for label, key in (("cold", "cold"), ("restarted", "restart"), ("warm", "warm")):
        ratios = [a / b for a, b in zip(runs[key], runs["builtin"])]
        rows.append((f"7. ratio podman_rootless {label} / built-in (pairs)", ratios, "ratio"))
    for label, key in (
        ("8. CPU-seconds per task, whole machine: CLI `podman run` (row 1)", "cli"),
        ("8. CPU-seconds per task, whole machine: podman-py, 16 loops (row 2)", "api16"),
        ("8. CPU-seconds per task, whole machine: podman_rootless, concurrency 16", "ours"),
        ("8. CPU-seconds per task, whole machine: built-in podman, concurrency 16", "builtin"),
    ):
        if cpu[key]:
            rows.append((label, cpu[key], "cpu-s/task"))
    for label, samples, kind in rows[first:]:
        med, spread = summarise(samples)
        print(f"{label:60} {med:.4f} ± {spread:.4f} {kind}", flush=True)


def _cell(samples: List[float], kind: str, cli_med: float, builtin_med: Optional[float]) -> str:
    med, spread = summarise(samples)
    notes = []
    if kind == "s/task":
        notes.append(f"{med / cli_med:.2f}x row 1")
    if builtin_med is not None:
        notes.append(f"{builtin_med / med:.2f}x faster than row 4")
    return f"{med:.4f} ± {spread:.4f}" + (f" ({'; '.join(notes)})" if notes else "")


def write_doc(out: Path, lanes: List[Tuple[str, Dict[str, object]]]) -> None:
    """docs/benchmarks.md: one column per Podman lane, the same rows, then the kept analysis."""
    names = [name for name, _ in lanes]
    facts = [dict(r["facts"]) for _, r in lanes]  # type: ignore[call-overload]
    keys = list(facts[0])
    lines = [
        "# Benchmarks",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `nox -s bench` (`contrib/bench/bench.py`), as",
        "an unprivileged user, on every Podman lane of the test bed (the host's Podman, and the",
        "newer ones in their debootstrap trees: `contrib/testbed/lane.sh`), one lane after the",
        "other on the same machine, every row of a lane side by side: same image",
        f"(`{IMAGE}`, busybox + bash), storage and network (`none` for the CLI, podman-py and",
        "podman_rootless rows; the built-in backend has no network option and uses Podman's",
        f"default). Median ± half the range over {lanes[0][1].get('reps', '?')} repetitions."
        " Scatter rows are `miniwdl run`",
        "wall time divided by the number of tasks (so they include miniwdl's own start-up and",
        "per-task work). In brackets: the ratio to the CLI floor (row 1) and, for our rows, how",
        "much faster than miniwdl's built-in backend (row 4) at the same concurrency.",
        "",
        "| lane | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
        *[f"| {k} | " + " | ".join(str(f.get(k, "")) for f in facts) + " |" for k in keys],
        "",
        "| row | unit | " + " | ".join(names) + " |",
        "| --- | --- |" + " ---: |" * len(names),
    ]
    tables = []
    for _, r in lanes:
        rows = {str(label): (list(samples), str(kind)) for label, samples, kind in r["rows"]}  # type: ignore[attr-defined]
        cli_med = summarise(next(iter(rows.values()))[0])[0]
        tables.append((rows, cli_med))
    for label, (_, kind) in tables[0][0].items():
        cells = []
        for rows, cli_med in tables:
            if label not in rows:
                cells.append("")
                continue
            builtin_med = None
            if label.startswith("3.") and kind == "s/task":
                twin = "4. built-in podman" + label[len("3. podman_rootless") :]
                if twin in rows:
                    builtin_med = summarise(rows[twin][0])[0]
            if label == API16:  # plain podman-py against the built-in backend at c16
                twin = next((t for t in rows if t.startswith("4.") and t.endswith(" 16")), "")
                if twin:
                    builtin_med = summarise(rows[twin][0])[0]
            cells.append(_cell(rows[label][0], kind, cli_med, builtin_med))
        lines.append(f"| {label} | {kind} | " + " | ".join(cells) + " |")
    existing = out.read_text() if out.exists() else ""
    marker = "\n## Analysis"
    analysis = existing[existing.index(marker) :] if marker in existing else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n" + analysis)
    print(f"wrote {out}")


def combine(argv: List[str]) -> int:
    """``bench.py combine OUT.md NAME=RESULT.json ...``: the document from several lanes."""
    out, pairs = Path(argv[0]), [a.split("=", 1) for a in argv[1:]]
    write_doc(out, [(name, json.loads(Path(path).read_text())) for name, path in pairs])
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["combine"]:
        sys.exit(combine(sys.argv[2:]))
    sys.exit(main())
