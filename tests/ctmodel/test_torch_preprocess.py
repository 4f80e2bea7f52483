"""ctmodel.torch_preprocess: the torch copy of the store's preprocessing gives what the numpy path gives.

Tolerance of the pair: the network input within one step of the stored dtype (1/255 uint8, 1/1024 float16) on
under 1 % of pixels, identical elsewhere; the inverse within 1e-5; a written probability map within 2e-3.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from ctmodel import torch_preprocess
from ctmodel.backends import model_predictor, numpy_backend, torch_backend
from ctmodel.config import ModelConfig
from ctmodel.nets import build_model
from ctmodel.predict import predict_paths
from ctprep import geometry
from ctprep.preprocess import prepare_input
from ctprep.store import StoreLayout
from conftest import phantom, ras_affine, save_nifti, to_lps, to_permuted

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SHAPE = (72, 60, 9)  # x, y, z: non-square slices, padded to 72 then resized


def _orientations():
    hu, _ = phantom(SHAPE, seed=3)
    affine = ras_affine((0.7, 0.8, 2.5))
    return {"ras": (hu, affine), "lps": to_lps(hu, affine), "permuted": to_permuted(hu, affine)}


@pytest.mark.parametrize("orientation", ["ras", "lps", "permuted"])
@pytest.mark.parametrize("dtype", ["float16", "uint8"])
@pytest.mark.parametrize("size", [48, 72, 96])  # shrink, pad only, enlarge
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_prepare_matches_the_numpy_preprocessing(orientation, dtype, size, device):
    hu, affine = _orientations()[orientation]
    layout = StoreLayout(size=size, dtype=dtype)
    expected, geom = prepare_input(hu, affine, layout)
    got = torch_preprocess.prepare(torch.from_numpy(hu).to(device), geom, layout).cpu().numpy()
    assert got.shape == expected.shape
    step = 1 / 255 if dtype == "uint8" else 1 / 1024  # one code of the stored dtype, at most, where sums round apart
    assert np.abs(got - expected).max() <= step + 1e-6
    assert np.mean(got != expected) < 0.01


@pytest.mark.parametrize("orientation", ["ras", "lps", "permuted"])
def test_restore_matches_the_numpy_inverse(orientation):
    hu, affine = _orientations()[orientation]
    geom = geometry.describe(affine, hu.shape, 48)
    probs = np.random.default_rng(0).random((geom.n_slices, 48, 48), dtype=np.float32)
    expected = geometry.inverse(probs, geom)
    got = torch_preprocess.restore(torch.from_numpy(probs), geom).numpy()
    assert got.shape == hu.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_torch_backend_writes_what_the_numpy_backend_writes(tmp_path):
    hu, affine = _orientations()["lps"]
    source = save_nifti(tmp_path / "scan.nii.gz", hu, affine)
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=4, depth=2)).eval()
    layout = StoreLayout(size=48)
    cpu = torch.device("cpu")
    predict_paths(source, tmp_path / "np.nii.gz", numpy_backend(model_predictor(model, cpu)), layout,
                  probabilities=True, progress=False)
    predict_paths(source, tmp_path / "t.nii.gz", torch_backend(model, cpu), layout, probabilities=True,
                  progress=False)
    a, b = nib.load(str(tmp_path / "np.nii.gz")), nib.load(str(tmp_path / "t.nii.gz"))
    assert a.shape == b.shape == hu.shape and np.allclose(a.affine, b.affine)
    np.testing.assert_allclose(np.asarray(b.dataobj), np.asarray(a.dataobj), atol=2e-3)
