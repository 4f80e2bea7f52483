"""The project's one error hierarchy: the CLI catches CtstackError and prints its message on one line."""
from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager


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


class StorageError(CtstackError, OSError):
    """A file could not be written: the disk is full, the file system read-only or access denied (exit 1)."""


_STORAGE_FAULTS = {  # errno -> what is wrong (expected X, found Y); what to do
    errno.ENOSPC: "cannot write (expected free space, found the disk full); free space on that disk or write "
                  "the output to another one",
    errno.EDQUOT: "cannot write (expected free space, found the disk quota used up); free space within your "
                  "quota or write the output to another disk",
    errno.EROFS: "cannot write (expected a writable file system, found a read-only one); copy the data to a "
                 "writable path or write the output elsewhere",
    errno.EACCES: "cannot access (expected permission, found it denied); make the path readable and writable "
                  "for you or use another path",
    errno.EPERM: "cannot access (expected permission, found the operation not permitted); make the path "
                 "readable and writable for you or use another path",
}


def storage_error(err: OSError, where: object = None) -> StorageError | None:
    """The one-line StorageError for a full disk, read-only file system or denied access; None for other faults.

    The message names the file of ``err``, else ``where`` (e.g. the store being written).
    """
    if isinstance(err, CtstackError) or err.errno not in _STORAGE_FAULTS:
        return None
    where = err.filename if err.filename is not None else where or "(a file the system did not name)"
    mapped = StorageError(f"{where}: {_STORAGE_FAULTS[err.errno]}")
    mapped.errno = err.errno  # str() stays the message: strerror and filename are left unset
    return mapped


@contextmanager
def storage_errors(where: object = None) -> Iterator[None]:
    """Re-raise a full disk, read-only file system or denied access as StorageError (chained); others unchanged.

    ``where`` is named when the system does not name the file (zarr's chunk writes do not)."""
    try:
        yield
    except OSError as err:
        mapped = storage_error(err, where)
        if mapped is None:
            raise
        raise mapped from err
