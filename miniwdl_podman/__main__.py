"""``python -m miniwdl_podman doctor [--fix] [--json] [--image IMAGE]``, or ``node-run JOB.json``
(the Slurm backend's node helper)."""

import sys

from .doctor import cli

sys.exit(cli())
