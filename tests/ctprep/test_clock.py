"""UTC time stamps: one helper for the ISO form in metadata and the compact form in folder names."""
from __future__ import annotations

import calendar
import time

from hypothesis import given, strategies as st

from ctprep.clock import ISO_UTC, NAME_UTC, utc_stamp

Y2100 = calendar.timegm((2100, 1, 1, 0, 0, 0))  # keeps years at four digits, where text order is time order


def test_epoch_in_both_forms():
    assert utc_stamp(ISO_UTC, 0) == "1970-01-01T00:00:00Z"
    assert utc_stamp(NAME_UTC, 0) == "19700101-000000"


def test_a_known_instant_reads_back_as_the_same_utc_time():
    seconds = calendar.timegm((2024, 2, 29, 23, 59, 7))  # a leap day, a second before midnight UTC
    assert utc_stamp(seconds=seconds) == "2024-02-29T23:59:07Z"
    assert calendar.timegm(time.strptime(utc_stamp(NAME_UTC, seconds), NAME_UTC)) == seconds


def test_now_is_the_default():
    before = int(time.time())
    stamp = calendar.timegm(time.strptime(utc_stamp(), ISO_UTC))
    assert before <= stamp <= int(time.time())


@given(st.integers(0, Y2100), st.integers(0, Y2100))
def test_folder_names_sort_in_time_order(a, b):
    assert (utc_stamp(NAME_UTC, a) < utc_stamp(NAME_UTC, b)) == (a < b)
    assert (utc_stamp(ISO_UTC, a) < utc_stamp(ISO_UTC, b)) == (a < b)
