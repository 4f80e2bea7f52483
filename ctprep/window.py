"""HU windowing and the stored intensity encodings (float16 in [0, 1] or uint8 0..255)."""
from __future__ import annotations

import numpy as np

STORED_DTYPES = ("float16", "uint8")
AIR_HU = -1000.0


def parse_window(text: str) -> tuple[float, float]:
    """Parse 'LO,HI' (HU) into a (lo, hi) pair with lo < hi."""
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError as err:
        raise ValueError(f"window {text!r}: expected 'LO,HI' in HU, e.g. -1000,400") from err
    if not lo < hi:
        raise ValueError(f"window {text!r}: LO must be below HI, e.g. -1000,400")
    return lo, hi


def apply_window(hu: np.ndarray, window_hu: tuple[float, float], in_place: bool = False) -> np.ndarray:
    """Map HU to float32 in [0, 1]: (HU - lo) / (hi - lo), clipped; ``in_place`` reuses a float32 ``hu``."""
    lo, hi = window_hu
    out = hu if in_place and hu.dtype == np.float32 else np.array(hu, dtype=np.float32)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def air_value(window_hu: tuple[float, float]) -> float:
    """The windowed value of air (-1000 HU), used to pad slices to square."""
    lo, hi = window_hu
    return float(min(max((AIR_HU - lo) / (hi - lo), 0.0), 1.0))


def encode(unit: np.ndarray, dtype: str) -> np.ndarray:
    """Encode [0, 1] floats as the store's dtype: float16 as is, uint8 as round(255 x)."""
    if dtype == "float16":
        return unit.astype(np.float16)
    if dtype == "uint8":
        return np.rint(unit * 255.0).astype(np.uint8)
    raise ValueError(f"stored dtype {dtype!r}: expected one of {', '.join(STORED_DTYPES)}")


def decode(stored: np.ndarray) -> np.ndarray:
    """Decode stored intensities back to float32 in [0, 1]."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) * np.float32(1.0 / 255.0)
    return stored.astype(np.float32)
