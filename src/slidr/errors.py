"""User-facing errors: the command line prints their message on one line and exits non-zero.

Exit codes of ``slidr``: 2 when the command line itself is wrong (:class:`UsageError`, :class:`ConfigError`, and
argparse's own errors: unknown options or keys, bad values, contradicting options, an argument naming the wrong
kind of file or folder, an output that cannot be written), 1 when the work failed (:class:`DataError` and every
other :class:`SlidrError`: missing or damaged data, a full disk, a non-finite loss), 130 when interrupted.
"""

from typing import Optional


class SlidrError(Exception):
    """Base class of errors caused by the user's input (files, settings), not by a bug."""


class UsageError(SlidrError):
    """The command line names something unusable: an output that cannot be written, a run folder of the wrong kind
    (exit code 2, as argparse's errors)."""


class WriteError(SlidrError):
    """A file could not be written (full disk, read-only or missing folder, no permission); the message names it.

    ``path`` is the file, ``reason`` what the system said (e.g. "No space left on device").
    """

    def __init__(self, message: str, path: Optional[str] = None, reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class DataError(SlidrError):
    """A data file is missing, truncated or inconsistent; the message names the file and what is wrong."""


class ConfigError(UsageError, ValueError):
    """A configuration file or override is invalid; the message names the key and what is wrong.

    ``key`` is the dotted key the error is about (``None`` when it concerns several), ``missing`` is true when a
    required setting was not given. Also importable as ``slidr.config.ConfigError``; defined here so that
    :mod:`slidr.registry` (which the config layer uses to check names) can raise it without importing the config
    module.
    """

    def __init__(self, message: str, key: Optional[str] = None, missing: bool = False) -> None:
        super().__init__(message)
        self.key = key
        self.missing = missing
