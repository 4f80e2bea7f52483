"""`ctprep demo`: synthetic chest CTs with lesion masks, written the way real datasets ship them.

Run: ctprep demo raw/ --cases 12   (then: ctprep convert raw/ store.zarr)

The generator is its own room; conversion never imports it. Read it top-down:
``writer`` (the set: options, layouts, NIfTI files, summary) -> ``phantom`` (one case rendered slice by slice)
-> ``anatomy`` (body, lungs, bones), ``vessels`` (vessel trees), ``lesions`` (ground-glass and consolidation),
``realistic`` (``--difficulty realistic``: look-alikes, artefacts, thick slices).
"""
from __future__ import annotations

from ctprep.demo.writer import (LAYOUTS, DemoConfig, case_affine, case_paths, encode_hu, iter_demo, make_demo,
                                rater_paths, storage_of, summary_rows, write_demo_case)

__all__ = ["LAYOUTS", "DemoConfig", "case_affine", "case_paths", "encode_hu", "iter_demo", "make_demo", "rater_paths",
           "storage_of", "summary_rows", "write_demo_case"]
