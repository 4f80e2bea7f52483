"""A store in object storage (s3://, against a local S3 server): convert writes the same keys and bytes as into a
local folder, `ctprep index` rebuilds the index there, and a killed writer's leftovers are cleared."""
from __future__ import annotations

from pathlib import Path

import pytest
from test_concurrent_writers import store_files, write_cases
from typer.testing import CliRunner

from cli import prep_app
from ctprep.convert import ConvertConfig, convert
from ctprep.location import open_location
from ctprep.store import SliceStore

CFG = ConvertConfig(size=16, workers=1)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """(raw folder of 3 cases, one unlabeled; the files of the store converted into a local folder)."""
    tmp = tmp_path_factory.mktemp("local")
    raw = write_cases(tmp / "raw", range(3), unlabeled=(1,))
    convert(raw, tmp / "local.zarr", CFG, progress=False)
    return raw, store_files(tmp / "local.zarr")


def object_files(url: str) -> dict[str, bytes]:
    """Every object of the store (not its lease) by its key relative to the store."""
    location = open_location(url)
    return {key: (location / key).read_bytes() for key in sorted(location.sizes()) if key != ".lease"}


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
