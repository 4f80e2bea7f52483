"""Shared fixtures: tiny NIfTI volumes written the way real datasets ship them, and tiny stores."""
from __future__ import annotations

import logging
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctprep.index import build_index, write_index
from ctprep.store import StoreLayout, create_or_open, write_case
from ctprep.preprocess import preprocess_image
from ctprep.raters import label_case
from ctprep.window import encode

SHAPE = (23, 17, 9)  # (x, y, z) in RAS: odd, non-square, few slices
SPACING_MM = (0.7, 0.8, 2.5)


def ras_affine(spacing_mm=SPACING_MM, origin=(-8.0, -6.0, -10.0)) -> np.ndarray:
    """A RAS+ affine with the given voxel sizes."""
    affine = np.diag([*spacing_mm, 1.0])
    affine[:3, 3] = origin
    return affine


def to_lps(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy stored LPS (as DICOM converters write it): flip x and y, adjust the affine."""
    flipped = data[::-1, ::-1, :].copy()
    lps = affine.copy()
    lps[:3, 0] *= -1
    lps[:3, 1] *= -1
    lps[:3, 3] = affine[:3, :3] @ [data.shape[0] - 1, data.shape[1] - 1, 0] + affine[:3, 3]
    return flipped, lps


def to_permuted(data: np.ndarray, affine: np.ndarray, order=(2, 0, 1)) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy with array axes permuted (e.g. slices first)."""
    return np.ascontiguousarray(data.transpose(order)), affine[:, [*order, 3]]


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype=None,
               slope: float | None = None, inter: float | None = None) -> Path:
    """Write a NIfTI file; with slope/inter the data is stored as raw ints that scale to ``data``."""
    if slope is not None:
        raw = np.rint((data - (inter or 0.0)) / slope).astype(dtype or np.int16)
        img = nib.Nifti1Image(raw, affine)
        img.header.set_slope_inter(slope, inter or 0.0)
    else:
        img = nib.Nifti1Image(np.asarray(data, dtype=dtype) if dtype else data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def phantom(shape=SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A tiny chest-like HU volume with a lesion blob, and its boolean mask; x, y, z RAS order."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    cx, cy = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    body = ((x - cx) / (shape[0] * 0.45)) ** 2 + ((y - cy) / (shape[1] * 0.45)) ** 2 <= 1
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, shape)
    lung = ((x - cx) / (shape[0] * 0.3)) ** 2 + ((y - cy) / (shape[1] * 0.3)) ** 2 <= 1
    hu[lung] = -850.0
    lesion = ((x - cx - 2) ** 2 + (y - cy) ** 2 <= 9) & (z >= shape[2] // 3) & (z < 2 * shape[2] // 3 + 1)
    hu[lesion] = -300.0
    return hu.astype(np.float32), lesion


@pytest.fixture
def tiny_phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hu, mask, affine) of one tiny RAS case."""
    hu, mask = phantom()
    return hu, mask, ras_affine()


def build_store(path: Path, cases: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray]],
                splits: dict[str, str], layout: StoreLayout = StoreLayout(size=16),
                raters: dict[str, dict[str, np.ndarray]] | None = None, consensus: str = "majority") -> Path:
    """Write a store directly from (hu, mask, affine) arrays, bypassing discovery (for ctsample/ctmodel tests).

    ``raters`` (case id -> {rater id: source-grid mask}) gives a case several annotators: its stored mask is then
    their ``consensus`` and the case's own mask is ignored; any other labeled case has one rater, "1"."""
    store = create_or_open(path, layout, consensus)
    for case_id, (hu, mask, affine) in cases.items():
        unit, geom = preprocess_image(hu, affine, layout)
        masks = (raters or {}).get(case_id) or ({"1": mask} if mask is not None else {})
        labeled = label_case(masks, geom, consensus) if masks else None
        attrs = {"geometry": geom.to_attrs(), "n_slices": int(unit.shape[0]), "lesion_pixels": None,
                 "source_lesion_voxels": None, **(labeled.attrs if labeled else {})}
        if labeled is None:
            write_case(path, case_id, encode(unit, layout.dtype), None, attrs)
        else:
            write_case(path, case_id, encode(unit, layout.dtype), labeled.mask, attrs, labeled.raters,
                       labeled.rater_ids)
    write_index(path, build_index(store, splits))
    return path


@pytest.fixture
def tiny_store(tmp_path: Path) -> Path:
    """A 16x16 store of 5 phantom cases (3 train, 1 val, 1 test) with lesions in the middle slices."""
    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(5)}
    splits = {"case0": "train", "case1": "train", "case2": "train", "case3": "val", "case4": "test"}
    return build_store(tmp_path / "store.zarr", {k: (hu, m, a) for k, (hu, m, a) in cases.items()}, splits)


def save_random_run(run_dir: Path, layout: StoreLayout) -> Path:
    """A run folder with a small randomly initialised dual encoder (what `ctmodel train` leaves, minus training)."""
    import json
    from dataclasses import asdict

    import torch

    from ctmodel.checkpoint import atomic_save, checkpoint_payload
    from ctmodel.config import ModelConfig
    from ctmodel.nets import build_model

    torch.manual_seed(0)
    model_cfg = ModelConfig(width=4, depth=2)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"model": asdict(model_cfg)}))
    atomic_save(checkpoint_payload(build_model(model_cfg), model_cfg, layout, epoch=1, state={}), run_dir / "best.pt")
    return run_dir


def one_line_error(result, stream: str = "output") -> str:
    """The only line a CliRunner result printed on ``stream`` ("output": both, or "stderr"), failing the test on a
    traceback or on several lines."""
    assert "Traceback" not in result.output
    lines = [line for line in getattr(result, stream).splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def sorted_with_unlabeled(cases, flags) -> tuple[list[str], set[str]]:
    """Case ids sorted, and the set of those whose flag (in sorted order) marks them unlabeled."""
    cases = sorted(cases)
    return cases, {case for case, flag in zip(cases, flags) if flag}


def add_pseudo(store_path: Path, case_id: str, mask: np.ndarray, confidence: list[float] | None = None,
               run: str = "runs/test") -> None:
    """Give an unlabeled case of a store the pseudo-label ``mask`` (stored grid, (Z, S, S) {0, 1}) and rebuild the
    index, as `ctmodel pseudo-label` does (confidence defaults to 1.0 per slice)."""
    from ctprep.index import build_index, read_index, write_index
    from ctprep.pseudo import write_pseudo
    from ctprep.store import SliceStore

    mask = np.asarray(mask, dtype=np.uint8)
    record = {"run": run, "checkpoint_sha256": "0" * 64, "threshold": 0.5,
              "lesion_pixels": [int(n) for n in mask.reshape(mask.shape[0], -1).sum(axis=1)],
              "confidence": list(confidence) if confidence is not None else [1.0] * mask.shape[0]}
    write_pseudo(store_path, case_id, mask, record)
    splits = read_index(store_path, check=False).groupby("case_id")["split"].first().astype(str).to_dict()
    write_index(store_path, build_index(SliceStore.open(store_path), splits))


@pytest.fixture(scope="session")
def s3_server():
    """A local S3-compatible server (moto) on 127.0.0.1 for the session; yields its endpoint URL."""
    pytest.importorskip("obstore", reason="obstore is not installed (pip install 'ctstack[cloud]')")
    server_module = pytest.importorskip("moto.server", reason="moto's server is not installed "
                                                              "(pip install 'ctstack[dev]')")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


S3_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}


@pytest.fixture
def s3_store(s3_server, monkeypatch) -> str:
    """The URL of a store in a fresh, empty bucket of the local S3 server ("s3://<bucket>/store.zarr"), with the
    credentials and endpoint in the environment as a user would set them (worker processes inherit them)."""
    import boto3

    for name, value in {**S3_ENVIRONMENT, "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(name, value)
    bucket = f"t{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/store.zarr"
