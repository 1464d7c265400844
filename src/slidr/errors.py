"""User-facing errors: the command line prints their message on one line and exits non-zero."""


class SlidrError(Exception):
    """Base class of errors caused by the user's input (files, settings), not by a bug."""


class DataError(SlidrError):
    """A data file is missing, truncated or inconsistent; the message names the file and what is wrong."""
