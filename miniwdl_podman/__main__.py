"""``python -m miniwdl_podman COMMAND``: the ``miniwdl-podman`` command (see :mod:`.cli`)."""

import sys

from .cli import main

sys.exit(main())
