"""A test-only crash point: lets tests kill a case's writer half-way through, once, to check what a crash leaves.

Set ``CTSTACK_TEST_CRASH=CASE_ID:MARKER`` in a test: the first process to write case CASE_ID (with its arrays
written, its zarr.json not yet) creates the file MARKER and exits at once, as if killed; later writers of the case
find MARKER and carry on. Unset (always, outside tests) it does nothing.
"""
from __future__ import annotations

import os

CRASH_VARIABLE = "CTSTACK_TEST_CRASH"
CRASH_EXIT_CODE = 70


def crash_point(case_id: str) -> None:
    """Exit this process at once if the test-only crash variable names ``case_id`` and its marker is new."""
    spec = os.environ.get(CRASH_VARIABLE)
    if not spec or spec.split(":", 1)[0] != case_id:
        return
    try:
        os.close(os.open(spec.split(":", 1)[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:  # crashed once already: this is the re-run
        return
    os._exit(CRASH_EXIT_CODE)
