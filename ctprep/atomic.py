"""Crash-safe file writes: write to a temp file beside the target, then rename it over the target."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (same suffix, so writers pick the right format) and os.replace it over
    ``path`` when the block succeeds; on any error the temp file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{uuid.uuid4().hex[:8]}.{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)
