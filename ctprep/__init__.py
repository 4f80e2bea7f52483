"""ctprep: find NIfTI cases, convert them once into a windowed, resized Zarr slice store."""
from __future__ import annotations

__version__ = "0.1.0"
