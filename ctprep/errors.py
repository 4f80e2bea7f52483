"""The project's one error hierarchy: the CLI catches CtstackError and prints its message on one line."""
from __future__ import annotations


class CtstackError(Exception):
    """Base class of every error the user can fix; anything else is a bug."""


class UsageError(CtstackError, ValueError):
    """An option or argument combination that cannot work (exit code 2)."""


class CaseError(CtstackError, ValueError):
    """One case (image/mask pair) is unreadable or invalid; the message names its file."""


class StoreNotFoundError(CtstackError, FileNotFoundError):
    """The path given as a store does not exist or is not a ctstack store."""


class StoreFormatError(CtstackError, ValueError):
    """The store exists but is of another format version or is damaged."""


class StoreLockedError(CtstackError, RuntimeError):
    """Another process holds the store's write lock."""


class PlanError(CtstackError, ValueError):
    """A slice plan cannot be built or does not belong to the store."""


class PlanNotFoundError(PlanError, UsageError, FileNotFoundError):
    """The plan file named on the command line does not exist (exit code 2, like any missing input path)."""


class RunError(CtstackError, ValueError):
    """A training run folder is missing, incomplete or conflicts with the options given."""


class RunLockedError(CtstackError, RuntimeError):
    """Another process is training into the same run folder (holds its lock)."""


class OutputError(CtstackError, ValueError):
    """Writing would lose data: an output exists already (without overwrite), or two inputs map to one output."""
