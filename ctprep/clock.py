"""UTC time stamps, in the two forms the tools write: ISO 8601 in metadata, compact in folder names."""
from __future__ import annotations

import time

ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"  # metadata (config.json "created_utc"): ISO 8601, the Z says UTC
NAME_UTC = "%Y%m%d-%H%M%S"  # folder names (runs/<model>-<stamp>): no ':' (Windows), sorts in time order


def utc_stamp(fmt: str = ISO_UTC, seconds: float | None = None) -> str:
    """``seconds`` since the epoch (default: now) as UTC text in ``fmt`` (ISO_UTC or NAME_UTC)."""
    return time.strftime(fmt, time.gmtime(seconds))
