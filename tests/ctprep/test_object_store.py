"""A store in object storage (s3://, against a local S3 server): convert writes the same keys and bytes as into a
local folder, `ctprep index` rebuilds the index there, and a killed writer's leftovers are cleared."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import one_line_error
from test_concurrent_writers import reference_store
from typer.testing import CliRunner

from cli import prep_app
from ctprep.convert import ConvertConfig, convert
from ctprep.errors import StorageError, StoreLockedError
from ctprep.lease import LEASE_FILE, LeaseTerms, acquire, object_lease, release
from ctprep.location import ObjectLocation, open_location
from ctprep.reindex import clear_orphan_cases
from ctprep.store import SliceStore

CFG = ConvertConfig(size=16, workers=1)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """(raw folder of 3 cases, one unlabeled; the files of the store converted into a local folder)."""
    return reference_store(tmp_path_factory.mktemp("local"), range(3), unlabeled=(1,))


def object_files(url: str) -> dict[str, bytes]:
    """Every object of the store (not its lease) by its key relative to the store."""
    location = open_location(url)
    return {key: (location / key).read_bytes() for key in sorted(location.sizes()) if key != LEASE_FILE}


def test_convert_into_s3_writes_the_same_keys_and_bytes_as_a_local_convert(s3_store, local_run):
    raw, expected = local_run
    report = convert(raw, s3_store, CFG, progress=False)
    assert sorted(report.converted) == ["p0", "p1", "p2"] and not report.failed
    assert object_files(s3_store) == expected  # arrays, case attributes (shard checksums), root metadata, index
    again = convert(raw, s3_store, CFG, progress=False)
    assert sorted(again.skipped) == ["p0", "p1", "p2"] and object_files(s3_store) == expected


def test_convert_through_the_cli_in_worker_processes(s3_store, local_run):
    raw, expected = local_run
    result = CliRunner().invoke(prep_app, ["convert", str(raw), s3_store, "--size", "16", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert object_files(s3_store) == expected
    store = SliceStore.open(s3_store)
    assert store.case_ids() == ["p0", "p1", "p2"] and store.read_image("p0").shape[1:] == (16, 16)


def test_ctprep_index_rebuilds_the_index_and_clears_a_killed_writers_case(s3_store, local_run):
    raw, expected = local_run
    convert(raw, s3_store, CFG, progress=False)
    store = open_location(s3_store)
    (store / "index.parquet").unlink()
    (store / "cases" / "p9" / "image" / "c" / "0" / "0" / "0").write_bytes(b"half a case, no zarr.json")
    result = CliRunner().invoke(prep_app, ["index", s3_store])
    assert result.exit_code == 0, result.output
    assert SliceStore.open(s3_store).case_ids() == ["p0", "p1", "p2"]
    assert object_files(s3_store) == {**expected, "cases/p9/image/c/0/0/0": b"half a case, no zarr.json"}
    assert clear_orphan_cases(store, stale_after_s=0.0) == 1  # once older than the stale age, it goes
    assert object_files(s3_store) == expected


def test_a_second_writer_is_refused_in_one_line_while_the_lease_is_held(s3_store, local_run):
    raw, _ = local_run
    convert(raw, s3_store, CFG, progress=False)
    with object_lease(open_location(s3_store), "wait for it to finish"):
        result = CliRunner().invoke(prep_app, ["convert", str(raw), s3_store, "--size", "16", "--workers", "1"])
    assert result.exit_code == 1
    line = one_line_error(result)
    assert line.startswith(f"error: {s3_store}: another writer holds the store's lease") and "renewed" in line
    assert not open_location(s3_store + "/.lease").exists()  # released


def test_an_abandoned_lease_is_taken_over_by_one_writer(s3_store):
    store = open_location(s3_store)
    killed = acquire(store, "wait")  # its holder died without releasing it
    with pytest.raises(StoreLockedError):
        acquire(store, "wait")
    an_hour_later = lambda: time.time() + 3600  # noqa: E731 (a clock past the lease's time to live)
    taker = acquire(store, "wait", now=an_hour_later)
    assert taker.owner != killed.owner
    assert json.loads((store / LEASE_FILE).read_bytes())["owner"] == taker.owner
    with pytest.raises(StoreLockedError):  # the taker holds it now: a third writer, even an hour later, waits
        acquire(store, "wait", terms=LeaseTerms(ttl_s=7200))
    release(killed)  # the old holder's release leaves the new holder's lease alone
    assert (store / LEASE_FILE).exists()


def test_a_holder_whose_lease_was_taken_over_fails_in_one_line_when_done(s3_store):
    store = open_location(s3_store)
    with pytest.raises(StoreLockedError, match="the write lease was lost while writing"):
        with object_lease(store, "wait", terms=LeaseTerms(ttl_s=0.3)) as lease:  # renewed every 0.1 s
            (store / LEASE_FILE).write_bytes(b'{"owner": "another writer"}')  # as a takeover would
            assert lease.lost.wait(timeout=30)  # the next renewal's If-Match fails
    assert (store / LEASE_FILE).read_bytes() == b'{"owner": "another writer"}'  # left to its new holder


def test_a_store_that_ignores_create_only_writes_is_refused(s3_store, monkeypatch):
    monkeypatch.setattr(ObjectLocation, "create", lambda self, data: self.write_bytes(data) or "tag")
    with pytest.raises(StorageError, match="ignores create-only writes"):
        with object_lease(open_location(s3_store), "wait"):
            pytest.fail("a store that overwrites on create-only writes was given a lease")


@pytest.mark.parametrize("command", [["verify", "--repair", "raw"], ["upgrade"]])
def test_commands_that_need_a_local_store_refuse_a_url_in_one_line(s3_store, local_run, command):
    raw, _ = local_run
    convert(raw, s3_store, CFG, progress=False)
    args = [command[0], s3_store, *(["--repair", str(raw)] if "--repair" in command else [])]
    result = CliRunner().invoke(prep_app, args)
    assert result.exit_code == 2
    assert one_line_error(result).endswith("needs a local store (expected a folder, found an object-storage URL); "
                                           "copy the store down, or use a local path")


def test_plain_verify_reads_a_store_in_s3(s3_store, local_run):
    convert(local_run[0], s3_store, CFG, progress=False)
    result = CliRunner().invoke(prep_app, ["verify", s3_store])
    assert result.exit_code == 0, result.output


def test_a_missing_bucket_or_unreachable_endpoint_is_one_line_naming_the_url(s3_store, monkeypatch):
    missing = "s3://no-such-bucket-17/store.zarr"
    result = CliRunner().invoke(prep_app, ["info", missing])
    assert result.exit_code == 1 and one_line_error(result).startswith(f"error: {missing}")
    assert "no such bucket" in result.output
    monkeypatch.delenv("AWS_ALLOW_HTTP")  # the local server speaks plain http
    result = CliRunner().invoke(prep_app, ["info", s3_store])
    assert result.exit_code == 1 and "an http:// endpoint without AWS_ALLOW_HTTP=true" in one_line_error(result)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    result = CliRunner().invoke(prep_app, ["info", s3_store])
    assert result.exit_code == 1
    line = one_line_error(result)
    assert line.startswith(f"error: {s3_store}") and "connection refused by the endpoint" in line
