"""Typed access to miniwdl's extra log levels (``notice``), which miniwdl adds at run time."""

from __future__ import annotations

import logging


def notice(logger: logging.Logger, msg: object) -> None:
    """Log at miniwdl's NOTICE level (milestones); INFO where miniwdl's levels are absent."""
    getattr(logger, "notice", logger.info)(msg)
