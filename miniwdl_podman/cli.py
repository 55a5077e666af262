"""The ``miniwdl-podman`` command: ``doctor`` (checks and ``--fix``), ``pull`` (get every image a
workflow may use, up front), and ``node-run`` (the Slurm backend's node helper, started by each
task's job)."""

from __future__ import annotations

import argparse
import json
import logging
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


def doctor_main(argv: Optional[List[str]] = None) -> int:
    """``miniwdl-podman doctor [--fix] [--json] [--image IMAGE]``."""
    parser = argparse.ArgumentParser(
        prog="miniwdl-podman doctor",
        description="Check that rootless Podman works here for miniwdl's podman_rootless backend.",
    )
    parser.add_argument("--fix", action="store_true", help="apply the fixes a user can (no root)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--image", help="image for the test container (pulled if needed)")
    parser.add_argument(
        "--node",
        action="store_true",
        default=None,
        help="check this host as a compute node of podman_rootless_slurm: the node helper's"
        " private service, node_storage, node_python (implied inside a Slurm job)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    doc = Doctor(image=args.image, node=args.node)
    checks = doc.run()
    fixes: List[str] = []
    if args.fix:
        fixes = doctor_fixes.apply(
            checks, uid=doc.uid, cfg_path=doc.cfg_path, settings=doc.settings, logger=doc.logger
        )
        if fixes:
            checks = Doctor(image=args.image, node=args.node).run()
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
            print(f"FIXED {line}")
        _print(checks)
        if failed and not args.fix and any(c.action for c in checks if c.status == FAIL):
            print("\nrun `miniwdl-podman doctor --fix` to apply the fixes marked `--fix does`")
    return 1 if failed else 0


def pull_main(argv: Optional[List[str]] = None) -> int:
    """``miniwdl-podman pull WORKFLOW.wdl [NAME=VALUE ...] [-i INPUTS.json] [--task T]
    [--cfg FILE]``: every image the workflow may use, each got once, ``name → digest``; exit 1
    naming every image that cannot be had."""
    parser = argparse.ArgumentParser(
        prog="miniwdl-podman pull",
        description="Get every container image a WDL workflow may use into your Podman store"
        " now (each once), so that no task of the run waits for or fails on a pull; inputs as"
        " for `miniwdl run`. Images that depend on what only the run knows are listed.",
    )
    parser.add_argument("wdl", help="the WDL document (workflow or task)")
    parser.add_argument("inputs", nargs="*", help="inputs as NAME=VALUE, as for `miniwdl run`")
    parser.add_argument("-i", "--input", dest="input_file", help="inputs JSON file")
    parser.add_argument("--task", help="the task to use, for a document of several tasks")
    parser.add_argument("--cfg", help="miniwdl configuration file (default: as `miniwdl run`)")
    args = parser.parse_args(argv)
    from . import pull

    return pull.run(args.wdl, args.inputs, args.input_file, args.task, args.cfg)


USAGE = """usage: miniwdl-podman doctor [--fix] [--json] [--image IMAGE] [--node]
       miniwdl-podman pull WORKFLOW.wdl [NAME=VALUE ...] [-i INPUTS.json] [--task T] [--cfg FILE]
       miniwdl-podman --version"""


def main(argv: Optional[List[str]] = None) -> int:
    """``miniwdl-podman SUBCOMMAND``: ``doctor``, ``pull``, ``node-run``, or ``--version``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "node-run":
        from . import node

        return node.main(argv[1:])
    if argv and argv[0] == "pull":
        return pull_main(argv[1:])
    if argv and argv[0] in ("--version", "version"):
        from . import __version__

        print(f"miniwdl-podman {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] != "doctor":
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return doctor_main(argv[1:])
