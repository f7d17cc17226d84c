"""User-error exceptions: the failures the CLI reports as one line on stderr with exit status 2.

Anything else that escapes a command is a bug and prints a traceback. This module imports nothing heavy
(no torch), so the CLI can use it before any model code is loaded.
"""

from __future__ import annotations


class UserInputError(Exception):
    """Base class of every expected, user-caused failure (bad path, bad file, bad option, unsupported model)."""


class BadInputError(UserInputError, ValueError):
    """An argument or option value that cannot be used (out-of-range index, empty list, wrong dtype)."""


class RunFolderMismatchError(UserInputError, ValueError):
    """A run folder holds the results or checkpoint of a run on other inputs or settings."""


class CorruptFileError(UserInputError, ValueError):
    """A file on disk is truncated, fails its recorded checksum, or holds non-finite weights."""


class OutputFolderError(UserInputError, OSError):
    """An output folder cannot be used: it is a file, read-only, or holds files of another run."""
