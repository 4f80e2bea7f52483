"""ctprep.atomic: a failed write never leaves a half-written file or a stray temp file."""
from __future__ import annotations

import pytest

from ctprep.atomic import replacing, write_text


def test_a_write_that_fails_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = write_text(tmp_path / "summary.json", "old")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_the_temp_file_keeps_the_suffix_so_writers_pick_the_format(tmp_path):
    with replacing(tmp_path / "sub" / "curves.png") as tmp:
        assert tmp.name.endswith(".png") and tmp.parent == tmp_path / "sub"
        tmp.write_bytes(b"png")
    assert (tmp_path / "sub" / "curves.png").read_bytes() == b"png"
