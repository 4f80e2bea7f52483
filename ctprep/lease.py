"""The write lock of a store in object storage: a lease object, ``STORE/.lease``, that only one writer can create.

Object stores have no file locks, but they have conditional writes: a create-only put (If-None-Match: *) has one
winner, and a put with If-Match replaces the object only if nobody changed it since. The holder writes the lease
with a create-only put, renews it every third of its time to live (each renewal changes the body: a counter and
a time, since S3's e-tag is the body's MD5), and deletes it when done. A lease older than its time to live plus
a clock-skew margin is a killed holder's: the next writer takes it over with If-Match, so of several only one
wins. Before the first write a probe checks that the store honours create-only puts (docs/scaling.md).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from ctprep.errors import StorageError, StoreLockedError
from ctprep.location import ObjectLocation

LEASE_FILE = ".lease"
PROBE_PREFIX = ".lease-probe-"


@dataclass(frozen=True)
class LeaseTerms:
    """How long a lease lives unrenewed, and the clock difference allowed between machines and the server."""

    ttl_s: float = 120.0  # renewed every ttl_s / 3: a holder paused for minutes loses it
    skew_s: float = 60.0  # a lease counts as abandoned only ttl_s + skew_s after its last renewal
    poll_s: float = 0.5  # while waiting for a held lease


@dataclass
class Lease:
    """A held lease: the object, who holds it (owner), its current e-tag and renewal count."""

    location: ObjectLocation
    owner: str
    command: str = "ctprep"  # what the holder runs, shown to a writer kept waiting
    tag: str = ""
    seq: int = 0
    lost: threading.Event = field(default_factory=threading.Event)

    def body(self, terms: LeaseTerms) -> bytes:
        """The lease object's bytes for renewal ``seq`` (always different from the last)."""
        return json.dumps({"owner": self.owner, "command": self.command, "seq": self.seq, "renewed": time.time(),
                           "ttl_s": terms.ttl_s}).encode()


@contextmanager
def object_lease(store: ObjectLocation, then: str, wait_s: float = 0.0, terms: LeaseTerms = LeaseTerms(),
                 now: Callable[[], float] = time.time) -> Iterator[Lease]:
    """Hold ``store``'s lease while the block runs; StoreLockedError (ending with ``then``) when another writer
    holds it for ``wait_s`` seconds; StoreLockedError after the block when the lease was lost meanwhile
    (renewal failed: the holder was paused past the time to live and another writer took over)."""
    check_conditional_puts(store)
    lease = acquire(store, then, wait_s, terms, now)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lease, terms, stop), name="lease-renewal", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join()
        release(lease)
    if lease.lost.is_set():
        raise StoreLockedError(f"{lease.location}: the write lease was lost while writing (not renewed within "
                               f"{terms.ttl_s:g} s, another writer may have taken over); run the command again")


def acquire(store: ObjectLocation, then: str, wait_s: float = 0.0, terms: LeaseTerms = LeaseTerms(),
            now: Callable[[], float] = time.time) -> Lease:
    """Create the lease, or take over an abandoned one; StoreLockedError if a live holder keeps it ``wait_s``."""
    lease = Lease(store / LEASE_FILE, owner=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    deadline = time.monotonic() + wait_s
    while True:
        with suppress(FileExistsError):  # held: look at its holder below
            lease.tag = lease.location.create(lease.body(terms))
            return lease
        held = _holder(lease.location)
        if held is None:  # released between our two requests: try again at once
            continue
        record, tag, age_s = held[0], held[1], now() - held[2]
        if age_s > float(record.get("ttl_s", terms.ttl_s)) + terms.skew_s:
            try:
                lease.tag = lease.location.replace_if(lease.body(terms), tag)
                return lease
            except FileExistsError:  # another writer took it over first
                continue
        if time.monotonic() >= deadline:
            raise StoreLockedError(f"{store}: another writer holds the store's lease ({record.get('owner', '?')}, "
                                   f"{record.get('command', '?')}, renewed {max(age_s, 0):.0f} s ago); {then}")
        time.sleep(terms.poll_s)


def _holder(location: ObjectLocation) -> tuple[dict, str, float] | None:
    """(lease record, e-tag, last-modified time) of the current lease, or None when there is none."""
    try:
        body, meta = location.read_with_meta()  # one GET: the bytes and the e-tag of the same version
    except FileNotFoundError:
        return None
    try:
        record = json.loads(body)
    except ValueError:  # a lease of unreadable bytes: judged by its age alone
        record = {}
    return (record if isinstance(record, dict) else {}), str(meta["e_tag"]), meta["last_modified"].timestamp()


def _renew(lease: Lease, terms: LeaseTerms, stop: threading.Event) -> None:
    """Renew the lease every ttl_s / 3 until ``stop``; a failed renewal marks it lost and ends the thread."""
    while not stop.wait(terms.ttl_s / 3):
        lease.seq += 1
        try:
            lease.tag = lease.location.replace_if(lease.body(terms), lease.tag)
        except (FileExistsError, StorageError):
            lease.lost.set()
            return


def release(lease: Lease) -> None:
    """Delete the lease if it is still ours (a taken-over lease is left to its new holder).

    Object stores offer no conditional delete here: between the check and the delete another writer could take
    over an expired lease, a window of one request that only a holder paused past its time to live opens."""
    with suppress(FileNotFoundError):  # gone already: nothing to release
        if str(lease.location.head()["e_tag"]) == lease.tag:
            lease.location.unlink()


def check_conditional_puts(store: ObjectLocation) -> None:
    """StorageError unless the store refuses a second create-only put of one key (some S3-compatible servers
    ignore If-None-Match, and then the lease cannot keep two writers apart)."""
    probe = store / f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
    probe.create(b"1")
    try:
        probe.create(b"2")
    except FileExistsError:
        return
    finally:
        probe.unlink()
    raise StorageError(f"{store}: this object store ignores create-only writes (expected a refused second "
                       "If-None-Match put, found it accepted), so one writer at a time cannot be enforced; use a "
                       "store that supports conditional writes (AWS S3, GCS, Azure, MinIO, R2) or a local path")
