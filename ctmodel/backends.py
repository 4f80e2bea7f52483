"""Where `ctmodel predict`'s stages run: numpy on the CPU around any predictor, or torch on the model's device.

A ``Backend`` turns HU into the network's input, runs the network and inverts its probabilities to the source
grid; ``ctmodel.predict`` reads and writes around it. The two are one documented pair (ctprep/preprocess.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ctprep import geometry
from ctprep.preprocess import prepare_input
from ctprep.store import StoreLayout

Predictor = Callable[[np.ndarray], np.ndarray]  # stored (Z, S, S) float32 [0, 1] -> probabilities (Z, S, S)


@dataclass(frozen=True)
class Backend:
    """Where a scan's stages run: ``prepare`` (HU, affine -> network input, geometry), ``network`` (input ->
    stored probabilities) and ``restore`` (probabilities -> source-grid array to write, lesion voxel count)."""

    prepare: Callable[[np.ndarray, np.ndarray, StoreLayout], tuple[object, geometry.CaseGeometry]]
    network: Callable[[object], object]
    restore: Callable[[object, geometry.CaseGeometry, float, bool], tuple[np.ndarray, int]]


def restore_numpy(probs: np.ndarray, geom: geometry.CaseGeometry, threshold: float,
                  probabilities: bool = False) -> tuple[np.ndarray, int]:
    """Stored (Z, S, S) probabilities -> (source-grid uint8 mask, or float32 probabilities, lesion voxel count);
    the threshold applies on the source grid. `ctmodel evaluate --grid native` scores this same array."""
    source_probs = geometry.inverse(probs, geom)
    mask = (source_probs >= threshold).astype(np.uint8)
    return (source_probs.astype(np.float32) if probabilities else mask), int(mask.sum())


def numpy_backend(predictor: Predictor) -> Backend:
    """Preprocess and invert with ctprep's numpy code on the CPU around any stored-volume ``predictor``."""
    return Backend(prepare=prepare_input, network=predictor, restore=restore_numpy)


def torch_backend(model, device, batch_size: int | None = None, precision: str = "bf16",
                  uncertainty: bool = False) -> Backend:
    """Every stage after reading on ``device`` (ctmodel.torch_preprocess): one upload of HU, one download of the
    mask. The backend `ctmodel predict` uses (on 2 CPU cores it also beats the numpy path by ~1.3x;
    benchmarks/predict.py measures both). With ``uncertainty`` (UGS models) ``network`` returns (consensus
    probabilities, uncertainty band) (ctmodel.heads.band)."""
    import torch

    from ctmodel import torch_preprocess
    from ctmodel.device import inference_batch
    from ctmodel.heads import band
    from ctmodel.inference import predict_heads, predict_volume

    def sync(tensor):
        if tensor.device.type == "cuda":  # stage timings should be the stage's own, not the next one's
            torch.cuda.synchronize(tensor.device)
        return tensor

    def prepare(hu: np.ndarray, affine: np.ndarray, layout: StoreLayout):
        geom = geometry.describe(affine, hu.shape, layout.size)
        return sync(torch_preprocess.prepare(torch.from_numpy(hu).to(device), geom, layout)), geom

    def network(stored):
        if uncertainty:
            probs = predict_heads(model, stored, inference_batch(stored.device, batch_size), precision)
            return probs[0], sync(band(probs))
        return sync(predict_volume(model, stored, inference_batch(stored.device, batch_size), precision))

    def restore(probs, geom: geometry.CaseGeometry, threshold: float, probabilities: bool) -> tuple[np.ndarray, int]:
        source_probs = torch_preprocess.restore(probs, geom)
        mask = source_probs >= threshold
        lesion_voxels = int(mask.sum())
        written = source_probs if probabilities else mask.to(torch.uint8)
        return written.permute(2, 1, 0).contiguous().cpu().numpy().T, lesion_voxels  # Fortran order, as NIfTI

    return Backend(prepare=prepare, network=network, restore=restore)


def model_predictor(model, device, batch_size: int | None = None, precision: str = "bf16") -> Predictor:
    """Wrap a 2.5D network as a Predictor: numpy volume in, numpy probabilities out (whole volume on ``device``)."""
    import torch

    from ctmodel.device import inference_batch
    from ctmodel.inference import predict_volume

    def run(volume: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(device)
        return predict_volume(model, tensor, inference_batch(tensor.device, batch_size), precision).cpu().numpy()

    return run
