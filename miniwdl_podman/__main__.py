"""``python -m miniwdl_podman doctor [--fix] [--json] [--image IMAGE]``."""

import sys

from .doctor import cli

sys.exit(cli())
