"""Store locations: local paths stay paths, URLs become object-storage prefixes that answer pathlib's questions."""
from __future__ import annotations

from pathlib import Path

import pytest

from ctprep.errors import StorageError
from ctprep.location import is_url, open_location


def test_urls_and_paths_are_told_apart():
    assert is_url("s3://bucket/store.zarr") and is_url("gs://b/s") and is_url("az://c/s")
    assert not is_url("store.zarr") and not is_url(Path("s3:/b/s")) and not is_url("file:///tmp/s")
    assert open_location("file:///tmp/store.zarr") == Path("/tmp/store.zarr")
    assert open_location("store.zarr") == Path("store.zarr")


def test_object_location_keeps_the_url_and_joins_keys(s3_store):
    location = open_location(s3_store + "/")
    assert str(location) == s3_store
    assert str(location / "cases" / "a") == f"{s3_store}/cases/a"
    assert (location / "cases" / "a").name == "a"


def test_object_round_trip_listing_and_deletion(s3_store):
    location = open_location(s3_store)
    (location / "cases" / "a" / "zarr.json").write_bytes(b"{}")
    (location / "cases" / "b" / "image" / "c").write_bytes(b"12345")
    assert (location / "cases" / "a" / "zarr.json").read_bytes() == b"{}"
    assert [p.name for p in (location / "cases").iterdir()] == ["a", "b"]
    assert location.sizes() == {"cases/a/zarr.json": 2, "cases/b/image/c": 5}
    assert (location / "cases" / "b").is_dir() and not (location / "cases" / "b").exists()
    assert (location / "cases" / "b").delete_prefix() == 1
    assert location.sizes() == {"cases/a/zarr.json": 2}
    with pytest.raises(FileNotFoundError):
        (location / "nothing").read_bytes()


def test_create_only_put_has_one_winner_and_if_match_sees_changes(s3_store):
    lease = open_location(s3_store) / ".lease"
    tag = lease.create(b"first")
    with pytest.raises(FileExistsError):
        lease.create(b"second")
    new_tag = lease.replace_if(b"renewed", tag)
    with pytest.raises(FileExistsError):
        lease.replace_if(b"stale holder", tag)
    assert lease.read_bytes() == b"renewed" and new_tag != tag


def test_missing_bucket_is_one_line_naming_the_url(s3_store):
    missing = "s3://no-such-bucket-here/store.zarr"
    with pytest.raises(StorageError, match=f"^{missing}.*no such bucket"):
        open_location(missing).is_dir()
