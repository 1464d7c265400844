"""Logging: one ``slidr`` logger, and warnings that are said once per process."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("slidr")
_said: set[str] = set()


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (pytest and notebooks replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(verbose: bool = False) -> None:
    """Plain ``slidr: message`` lines on stderr (used by the command line)."""
    if logger.handlers:
        return
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("slidr: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time it is seen in this process."""
    if message in _said:
        return
    _said.add(message)
    logger.warning("warning: %s", message)
