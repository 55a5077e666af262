"""The ``miniwdl-podman`` command, argparse subcommands each with its own ``--help``:

- ``doctor`` (checks, ``--fix``, ``--json``, ``--cfg``),
- ``pull`` (get every image a workflow may use, up front),
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
