"""The ``miniwdl-podman`` command, argparse subcommands each with its own ``--help``:

- ``doctor`` (checks, ``--fix``, ``--json``, ``--cfg``),
- ``pull`` (get every image a workflow may use, up front),
- ``report`` (a run's usage: one HTML page, and a TSV),
- ``version`` (also ``--version``),
- ``node-run`` (the Slurm backend's node helper, started by each task's job; not for people).

Exit statuses: 0 success; 1 a check failed (doctor) or an image cannot be had (pull); 2 a usage
error or an input that is not right. Shell completion through argcomplete (miniwdl's own
dependency): ``eval "$(register-python-argcomplete miniwdl-podman)"``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from typing import List, Optional

from . import __version__, doctor_fixes
from .doctor import FAIL, JSON_SCHEMA, WARN, Check, Doctor


def _print(checks: List[Check]) -> None:
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.status:4}  {c.name:{width}}  {c.detail}")
        if c.fix and c.status in (WARN, FAIL):
            print(f"{'':4}  {'':{width}}  fix: {c.fix}")


def _doctor(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.CRITICAL)

    def examine() -> Doctor:
        return Doctor(image=args.image, node=args.node, cfg_file=args.cfg)

    doc = examine()
    checks = doc.run()
    fixes: List[str] = []
    if args.fix:
        fixes = doctor_fixes.apply(
            checks, uid=doc.uid, cfg_path=doc.cfg_path, settings=doc.settings, logger=doc.logger
        )
        if fixes:
            checks = examine().run()
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        report = {
            "tool": "miniwdl-podman",
            "version": __version__,
            "schema": JSON_SCHEMA,
            "checks": [asdict(c) for c in checks],
            "fixed": fixes,
            "ok": not failed,
        }
        print(json.dumps(report, indent=2))  # fmt: skip
    else:
        for line in fixes:
            print(line)
        _print(checks)
        if failed and not args.fix and any(c.action for c in checks if c.status == FAIL):
            print("\nrun `miniwdl-podman doctor --fix` to apply the fixes marked `--fix does`")
    return 1 if failed else 0


def _pull(args: argparse.Namespace) -> int:
    from . import pull

    return pull.run(args.wdl, args.inputs, args.input_file, args.task, args.cfg)


def _report(args: argparse.Namespace) -> int:
    from . import report, report_html

    run_dir = args.run_dir
    if not os.path.isdir(run_dir):
        print(f"miniwdl-podman report: {run_dir} is not a directory (give a run's directory,"
              " e.g. the one `miniwdl run` printed, or its _LAST link)",
              file=sys.stderr)  # fmt: skip
        return 2
    run_dir = os.path.realpath(run_dir)
    attempts = report.gather(run_dir)
    if not attempts:
        print(f"miniwdl-podman report: no task of {run_dir} has a usage record (usage.N.json:"
              " written by the podman_rootless backends for each task attempt)",
              file=sys.stderr)  # fmt: skip
        return 1
    summary = report.summarize(run_dir, attempts)
    out = args.output or os.path.join(run_dir, "report.html")
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(report_html.page(summary, attempts))
        if args.tsv:
            report.write_tsv(args.tsv, attempts)
    except OSError as exn:
        print(f"miniwdl-podman report: cannot write {exn.filename}: {exn.strerror}",
              file=sys.stderr)  # fmt: skip
        return 2
    state = (
        "finished" if summary.finished else ("in progress" if summary.running else "not finished")
    )
    print(f"{out}: {summary.tasks} tasks, {summary.attempts} attempts ({state}),"
          f" {summary.cpu_hours_used:.3f} of {summary.cpu_hours_reserved:.3f} CPU-hours"
          " reserved used")  # fmt: skip
    if args.tsv:
        print(f"{args.tsv}: one row per attempt")
    return 0


def _version(_args: argparse.Namespace) -> int:
    print(f"miniwdl-podman {__version__}")
    return 0


def _node_run(args: argparse.Namespace) -> int:
    from . import node

    return node.main([args.job])


def parser() -> argparse.ArgumentParser:
    """The command line (also what shell completion reads)."""
    top = argparse.ArgumentParser(
        prog="miniwdl-podman",
        description="Tools for miniwdl's podman_rootless and podman_rootless_slurm backends."
        " Exit status: 0 success, 1 a check failed or an image cannot be had, 2 usage error.",
    )
    top.add_argument("--version", action="version", version=f"miniwdl-podman {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    doc = sub.add_parser(
        "doctor",
        help="check (and --fix) that rootless Podman works here for the backend",
        description="Check that rootless Podman works here for miniwdl's podman_rootless"
        " backend, with the configuration a run would use. Exit status 1 while a check FAILs.",
    )
    doc.add_argument("--fix", action="store_true", help="apply the fixes a user can (no root)")
    doc.add_argument("--json", action="store_true", help="machine-readable output (schema 1)")
    doc.add_argument("--image", help="image for the test container (pulled if needed)")
    doc.add_argument(
        "--cfg",
        metavar="FILE",
        help="miniwdl configuration file, as `miniwdl run --cfg` (default: the one miniwdl"
        " would find: MINIWDL_CFG, then ~/.config/miniwdl.cfg, then /etc/xdg/miniwdl.cfg)",
    )
    doc.add_argument(
        "--node",
        action="store_true",
        default=None,
        help="check this host as a compute node of podman_rootless_slurm: the node helper's"
        " private service, node_storage, node_python (implied inside a Slurm job)",
    )
    doc.set_defaults(run=_doctor)

    pull = sub.add_parser(
        "pull",
        help="get every container image a WDL workflow may use, up front",
        description="Get every container image a WDL workflow may use into your Podman store"
        " now (each once), so that no task of the run waits for or fails on a pull; inputs as"
        " for `miniwdl run`. Images that depend on what only the run knows are listed. Exit"
        " status 1 naming every image that cannot be had, 2 for a document or input that is"
        " not right.",
    )
    pull.add_argument("wdl", help="the WDL document (workflow or task)")
    pull.add_argument("inputs", nargs="*", help="inputs as NAME=VALUE, as for `miniwdl run`")
    pull.add_argument("-i", "--input", dest="input_file", help="inputs JSON file")
    pull.add_argument("--task", help="the task to use, for a document of several tasks")
    pull.add_argument("--cfg", metavar="FILE", help="miniwdl configuration file")
    pull.set_defaults(run=_pull)

    rep = sub.add_parser(
        "report",
        help="a run's usage report: one HTML page (and a TSV) from its tasks' usage records",
        description="Write a self-contained HTML report of a run (finished or in progress):"
        " what every task asked for, used and waited for, with plots and a timeline; and, with"
        " --tsv, one row per attempt. Exit status 1 when the run has no usage record.",
    )
    rep.add_argument("run_dir", metavar="RUN_DIR", help="the run's directory (or its _LAST link)")
    rep.add_argument("-o", "--output", metavar="FILE", help="the HTML file (default:"
                     " RUN_DIR/report.html)")  # fmt: skip
    rep.add_argument("--tsv", metavar="FILE", help="also write one row per attempt here")
    rep.set_defaults(run=_report)

    version = sub.add_parser("version", help="print the version", description="Print the version.")
    version.set_defaults(run=_version)

    node_run = sub.add_parser(
        "node-run",
        help="the Slurm backend's node helper (started by each task's job)",
        description="Run one task attempt's container from its job file (the Slurm backend's"
        " node helper: its jobs start it; not for people).",
    )
    node_run.add_argument("job", help="the attempt's job file (tryN.json)")
    node_run.set_defaults(run=_node_run)
    return top


def main(argv: Optional[List[str]] = None) -> int:
    """``miniwdl-podman COMMAND ...``."""
    top = parser()
    try:
        import argcomplete

        argcomplete.autocomplete(top)
    except ImportError:  # miniwdl depends on it; without it there is just no completion
        pass
    args = top.parse_args(sys.argv[1:] if argv is None else argv)
    code: int = args.run(args)
    return code
