"""User-facing errors: the command line prints their message on one line and exits non-zero."""

from typing import Optional


class SlidrError(Exception):
    """Base class of errors caused by the user's input (files, settings), not by a bug."""


class DataError(SlidrError):
    """A data file is missing, truncated or inconsistent; the message names the file and what is wrong."""


class ConfigError(SlidrError, ValueError):
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
