"""The demo generator is its own room: conversion never loads it, and its documented API is what it exports."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import ctprep.demo
from ctprep import store

ROOT = Path(__file__).resolve().parents[2]


def test_conversion_never_imports_the_demo_generator():
    code = ("import sys, ctprep.convert, ctprep.info, ctprep.verify; "
            "print(sorted(m for m in sys.modules if m.startswith('ctprep.demo')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_names_demo_data_md_imports_are_exported():
    page = (ROOT / "docs" / "demo-data.md").read_text()
    imported = {name.strip() for names in re.findall(r"^from ctprep\.demo import (.+)$", page, re.MULTILINE)
                for name in names.split(",")}
    assert imported and imported <= set(ctprep.demo.__all__)


def test_the_demo_case_writer_and_the_store_case_writer_have_different_names():
    assert "write_case" not in ctprep.demo.__all__ and not hasattr(ctprep.demo, "write_case")
    assert ctprep.demo.write_demo_case.__module__ == "ctprep.demo.writer"  # what the worker pool pickles
    assert store.write_case.__module__ == "ctprep.store"
