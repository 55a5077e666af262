"""``python -m miniwdl_podman doctor [--fix] [--json] [--image IMAGE]``, or ``node-run JOB.json``
(the Slurm backend's node helper)."""

import sys

from .cli import main

sys.exit(main())
