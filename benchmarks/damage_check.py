"""Cost of the cheap damage check on index reads: read_index(check=True) vs read_index(check=False) (baseline).

Run: python benchmarks/damage_check.py [--cases 200]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from ctprep.index import build_index, read_index, write_index
from ctprep.store import StoreLayout, create_or_open, write_case
from timing import best_of


def main(n_cases: int = 200) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.zarr"
        store = create_or_open(path, StoreLayout(size=16))
        rng = np.random.default_rng(0)
        for i in range(n_cases):
            image = rng.random((64, 16, 16)).astype(np.float16)
            mask = (rng.random((64, 16, 16)) > 0.9).astype(np.uint8)
            write_case(path, f"c{i:04d}", image, mask, {"n_slices": 64, "lesion_pixels": mask.sum((1, 2)).tolist(),
                                                        "source_lesion_voxels": [0] * 64, "geometry": {}})
        write_index(path, build_index(store, {f"c{i:04d}": "train" for i in range(n_cases)}))
        base, _ = best_of(lambda: read_index(path, check=False), 5)
        checked, _ = best_of(lambda: read_index(path, check=True), 5)
    print(f"{n_cases} cases, {n_cases * 64} index rows")
    print(f"read_index without check (baseline): {base * 1e3:.1f} ms")
    print(f"read_index with damage check:        {checked * 1e3:.1f} ms  "
          f"(+{(checked - base) / n_cases * 1e6:.0f} us per case, {checked / base:.1f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200, help="cases of 64 slices in the store")
    main(parser.parse_args().cases)
