"""Errors that reach users as one clear line (the CLI prints ``error: <message>`` and exits with ``exit_code``).

All are ``ValueError`` subclasses, so library callers can catch the usual type. ``exit_code`` follows the
convention of the CLI: 2 for usage and configuration errors, 1 for failures while running.
"""

from __future__ import annotations


class DeitlabError(ValueError):
    """Base class; a runtime failure (exit code 1)."""

    exit_code = 1


class ConfigError(DeitlabError):
    """A bad argument, flag, config key or value (exit code 2)."""

    exit_code = 2


class DataError(DeitlabError):
    """A missing, corrupt or unusable data file or directory (exit code 1)."""


class CheckpointError(DeitlabError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model (exit code 1)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file or folder that is not there: both a :class:`DataError` (exit code 1) and a ``FileNotFoundError``."""
