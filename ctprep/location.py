"""Where a store lives: a local folder (a ``pathlib.Path``, handled as ever) or an object-storage URL
(``s3://bucket/store.zarr``, ``gs://``, ``az://``), reached through obstore (the optional ``ctstack[cloud]``).

``ObjectLocation`` is a key prefix in a bucket that answers the few ``pathlib`` questions the store code asks
(``/``, ``name``, ``exists``, ``read_bytes``, ``write_bytes``, ``iterdir``, ``stat``), plus what only object
stores have: one listing of sizes, create-only and If-Match puts (the lease, ``ctprep.lease``) and a Zarr store
rooted at the prefix. Credentials and endpoints come from the standard environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP; GOOGLE_APPLICATION_CREDENTIALS; AZURE_STORAGE_*), as
obstore reads them. ``import obstore`` happens only for URLs, so local users need nothing new.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Union

from ctprep.errors import StorageError, UsageError

if TYPE_CHECKING:
    import pandas as pd

URL_SCHEMES = ("s3://", "gs://", "az://", "abfs://", "abfss://", "adl://", "azure://", "http://", "https://")
CREDENTIALS_HINT = ("check the URL and the credentials in the environment (AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL and AWS_ALLOW_HTTP for a local server)")
RETRIES = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}  # obstore's default retries for 3 minutes


def is_url(text: str | Path) -> bool:
    """Whether a STORE argument is an object-storage URL (``file://`` is not: it names a local folder)."""
    return isinstance(text, str) and text.lower().startswith(URL_SCHEMES)


def open_location(store: str | Path | "ObjectLocation") -> "StoreLocation":
    """The store's location: an ObjectLocation for a URL, else a Path (``file:///x`` gives ``Path('/x')``)."""
    if isinstance(store, (Path, ObjectLocation)):
        return store
    if store.lower().startswith("file://"):
        return Path(store[len("file://"):])
    if is_url(store):
        return ObjectLocation.from_url(store)
    return Path(store)


def is_object(location: object) -> bool:
    """Whether ``location`` is an ObjectLocation (a store in object storage)."""
    return isinstance(location, ObjectLocation)


def require_local(location: StoreLocation, command: str) -> Path:
    """The local Path of ``location``; UsageError for an object-storage store, which ``command`` cannot handle."""
    if is_object(location):
        raise UsageError(f"{location}: `{command}` needs a local store (expected a folder, found an object-storage "
                         "URL); copy the store down, or use a local path")
    return Path(location)


def _client(url: str):
    """The obstore client of a store URL, made once per process and environment (credentials, endpoint)."""
    return _cached_client(url, tuple(sorted(storage_environment().items())))


STORAGE_VARIABLES = ("AWS_", "GOOGLE_", "AZURE_")  # the prefixes of what obstore reads credentials and endpoints from


def storage_environment() -> dict[str, str]:
    """This process's object-storage variables (credentials, endpoints), which worker processes are given."""
    return {name: value for name, value in os.environ.items() if name.startswith(STORAGE_VARIABLES)}


@lru_cache(maxsize=16)
def _cached_client(url: str, environment: tuple[tuple[str, str], ...]):
    """A cache of connections, never of data, keyed by the environment obstore reads."""
    from obstore.store import from_url

    with object_errors(url):
        return from_url(url, retry_config=RETRIES)


@dataclass(frozen=True)
class ObjectLocation:
    """A key prefix (``key``) below a store URL (``root``); ``str()`` gives the full URL."""

    root: str
    key: str = ""

    @classmethod
    def from_url(cls, url: str) -> "ObjectLocation":
        """The location of a store URL (trailing slashes dropped); UsageError when obstore is not installed."""
        try:
            import obstore  # noqa: F401
        except ImportError as err:
            raise UsageError(f"{url}: object-storage stores need obstore (found it not installed); "
                             "pip install 'ctstack[cloud]'") from err
        return cls(url.rstrip("/"))

    def __str__(self) -> str:
        return f"{self.root}/{self.key}" if self.key else self.root

    def __truediv__(self, name: str) -> "ObjectLocation":
        return ObjectLocation(self.root, f"{self.key}/{name}" if self.key else str(name))

    @property
    def name(self) -> str:
        """The last part of the key (of the URL for the store root)."""
        return str(self).rsplit("/", 1)[-1]

    @property
    def store_root(self) -> "ObjectLocation":
        """The store this key belongs to."""
        return ObjectLocation(self.root)

    def _store(self):
        return _client(self.root)

    def resolve(self) -> "ObjectLocation":
        """Itself: a URL is already absolute (``Path.resolve`` for local stores)."""
        return self

    def read_bytes(self) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        import obstore

        with object_errors(self):
            return bytes(obstore.get(self._store(), self.key).bytes())

    def read_with_meta(self) -> tuple[bytes, dict]:
        """The object's bytes and obstore's metadata of that very version (e_tag, last_modified); one GET."""
        import obstore

        with object_errors(self):
            result = obstore.get(self._store(), self.key)
            return bytes(result.bytes()), result.meta

    def write_bytes(self, data: bytes) -> None:
        """Replace the object with ``data`` (one PUT: readers see the old or the new bytes, never a mix)."""
        import obstore

        with object_errors(self):
            obstore.put(self._store(), self.key, data)

    def exists(self) -> bool:
        """Whether an object of this key exists (a prefix with keys below it does not count)."""
        try:
            self.head()
        except FileNotFoundError:
            return False
        return True

    def is_dir(self) -> bool:
        """Whether any key lies below this prefix."""
        import obstore

        with object_errors(self):
            listed = obstore.list_with_delimiter(self._store(), self._prefix())
        return bool(listed["common_prefixes"] or listed["objects"])

    def iterdir(self) -> Iterator["ObjectLocation"]:
        """The objects and prefixes one level below this one."""
        import obstore

        with object_errors(self):
            listed = obstore.list_with_delimiter(self._store(), self._prefix())
        keys = [*listed["common_prefixes"], *(entry["path"] for entry in listed["objects"])]
        return iter(ObjectLocation(self.root, key.rstrip("/")) for key in sorted(keys))

    def head(self) -> dict:
        """obstore's metadata of the object: size, e_tag, last_modified (server clock); FileNotFoundError if none."""
        import obstore

        with object_errors(self):
            return obstore.head(self._store(), self.key)

    def stat(self):
        """An ``os.stat_result``-like record with st_size and st_mtime (from ``head``)."""
        meta = self.head()
        return _Stat(int(meta["size"]), meta["last_modified"].timestamp())

    def sizes(self) -> dict[str, int]:
        """Every object below this prefix, in one listing: key relative to it -> bytes."""
        return {key: size for key, size, _ in self.listing()}

    def listing(self) -> list[tuple[str, int, float]]:
        """Every object below this prefix, in one listing: (key relative to it, bytes, last-modified time)."""
        import obstore

        start = len(self._prefix())
        with object_errors(self):
            return [(entry["path"][start:], int(entry["size"]), entry["last_modified"].timestamp())
                    for batch in obstore.list(self._store(), self._prefix(), chunk_size=1000) for entry in batch]

    def unlink(self, missing_ok: bool = False) -> None:
        """Delete the object (deleting an absent key is no error on object stores)."""
        import obstore

        with object_errors(self):
            obstore.delete(self._store(), self.key)

    def delete_prefix(self) -> int:
        """Delete every object below this prefix; returns how many."""
        import obstore

        keys = [f"{self._prefix()}{key}" for key in self.sizes()]
        with object_errors(self):
            for start in range(0, len(keys), 1000):
                obstore.delete(self._store(), keys[start:start + 1000])
        return len(keys)

    def create(self, data: bytes) -> str:
        """Write the object only if it does not exist (create-only put); returns its e-tag.

        Raises FileExistsError when it exists."""
        import obstore
        from obstore.exceptions import AlreadyExistsError

        try:
            with object_errors(self, passing=(AlreadyExistsError,)):
                return str(obstore.put(self._store(), self.key, data, mode="create")["e_tag"])
        except AlreadyExistsError as err:
            raise FileExistsError(f"{self}: exists") from err

    def replace_if(self, data: bytes, e_tag: str) -> str:
        """Replace the object only if its e-tag is still ``e_tag`` (If-Match); returns the new e-tag.

        Raises FileExistsError when the object changed (or is gone) meanwhile."""
        import obstore
        from obstore.exceptions import PreconditionError

        try:
            with object_errors(self, passing=(PreconditionError, FileNotFoundError)):
                return str(obstore.put(self._store(), self.key, data, mode={"e_tag": e_tag})["e_tag"])
        except (PreconditionError, FileNotFoundError) as err:
            raise FileExistsError(f"{self}: changed by another writer") from err

    def zarr_store(self, read_only: bool = True):
        """What zarr opens at this prefix. Reading: a path in the store root's Zarr store (one connection pool).
        Writing: a Zarr store rooted at the prefix itself, never at a parent, where zarr would also write
        implicit parent groups (a case's zarr.json before its arrays exist)."""
        from zarr.storage import ObjectStore, StorePath

        if read_only:
            return StorePath(ObjectStore(self._store(), read_only=True), self.key)
        return ObjectStore(_client(str(self)), read_only=False)

    def _prefix(self) -> str:
        return f"{self.key}/" if self.key else ""


@dataclass(frozen=True)
class _Stat:
    st_size: int
    st_mtime: float

    @property
    def st_mtime_ns(self) -> int:
        """st_mtime in nanoseconds, as os.stat_result has it."""
        return int(self.st_mtime * 1e9)


StoreLocation = Union[Path, ObjectLocation]


def zarr_target(location: StoreLocation, read_only: bool = True):
    """What zarr.open_* takes for ``location``: the folder's path text, or a Zarr store rooted at the prefix."""
    return location.zarr_store(read_only) if is_object(location) else str(location)


def write_file(location: StoreLocation, data: bytes) -> None:
    """Replace a file (atomically and durably, ``ctprep.atomic``) or an object (one PUT) with ``data``; either is
    left untouched when it already holds those bytes."""
    if not is_object(location):
        from ctprep.atomic import write_bytes

        write_bytes(location, data)
        return
    with suppress(FileNotFoundError):  # absent: write it
        if location.read_bytes() == data:
            return
    location.write_bytes(data)


def read_parquet(location: StoreLocation) -> "pd.DataFrame":
    """A Parquet file (local or object) as a DataFrame; bytes pass through memory, never a URL to pandas."""
    import pandas as pd

    if not is_object(location):
        return pd.read_parquet(location)
    return pd.read_parquet(io.BytesIO(location.read_bytes()))


def parquet_bytes(frame: "pd.DataFrame", **options) -> bytes:
    """``frame`` written as Parquet into memory."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, **options)
    return buffer.getvalue()


@contextmanager
def object_errors(where: object, passing: tuple[type, ...] = ()) -> Iterator[None]:
    """Re-raise obstore's errors (other than not-found and ``passing``) as one-line StorageError naming ``where``."""
    try:
        yield
    except FileNotFoundError as err:
        if "NoSuchBucket" in str(err):
            raise object_error(err, where) from err
        raise
    except Exception as err:
        if isinstance(err, passing) or isinstance(err, StorageError) or not _from_obstore(err):
            raise
        raise object_error(err, where) from err


def mapped_object_error(err: Exception) -> StorageError | None:
    """The one-line StorageError for an obstore error that reached a command unmapped (raised inside zarr's
    object store), naming the URL obstore reports; None for any other error."""
    if isinstance(err, StorageError) or not _from_obstore(err):
        return None
    return object_error(err, "object storage")


def object_error(err: Exception, where: object) -> StorageError:
    """The one-line StorageError for an obstore error at ``where``."""
    if "NoSuchBucket" in str(err):
        return StorageError(f"{where}: no such bucket (expected an existing bucket, found none); create the "
                            f"bucket first, or {CREDENTIALS_HINT}")
    return StorageError(f"{where}: object storage refused or failed ({_reason(err)}); {CREDENTIALS_HINT}")


_KNOWN_CAUSES = (("ConnectionRefused", "connection refused by the endpoint"),
                 ("BadScheme", "an http:// endpoint without AWS_ALLOW_HTTP=true"),
                 ("dns error", "endpoint host name not found"),
                 ("403 Forbidden", "access denied (403)"), ("InvalidAccessKeyId", "unknown access key"),
                 ("SignatureDoesNotMatch", "wrong secret key"), ("401 Unauthorized", "not authenticated (401)"))


def _reason(err: Exception) -> str:
    """What went wrong, in a few words: a known cause, else obstore's first sentence without the request."""
    text = str(err)
    for marker, cause in _KNOWN_CAUSES:
        if marker in text:
            return cause
    first = text.split("\n")[0]
    if " - " in first:  # "Generic S3 error: Error performing GET <url> in 3ms - HTTP error: ..."
        first = f"{first.split(':')[0]}: {first.rsplit(' - ', 1)[-1]}"
    return first[:200] or type(err).__name__


def _from_obstore(err: BaseException) -> bool:
    """Whether ``err`` comes from obstore (its exception types, or the Rust errors it raises as builtins)."""
    return type(err).__module__.startswith("obstore") or "object_store" in str(err) or "Generic S3 error" in str(err)
