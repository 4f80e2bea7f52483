"""`--target ugs`: UGS-Net's intersection and union heads on every model, their loss on a hand example, and
`ctmodel predict --uncertainty` writing the band map on the source grid (refused for other runs)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import model_app
from conftest import one_line_error, phantom, ras_affine, save_nifti, save_random_run
from ctmodel.checkpoint import atomic_save, checkpoint_payload
from ctmodel.config import ModelConfig, configs_from_options
from ctmodel.heads import band
from ctmodel.losses import UGS_HEAD_WEIGHT, DiceBCELoss, UGSLoss
from ctmodel.nets import build_model
from ctmodel.predict import uncertainty_path
from ctprep.store import StoreLayout

torch.set_num_threads(1)


@pytest.mark.parametrize("name, shape", [("dual-encoder", (2, 3, 33, 47)), ("unet2d", (2, 3, 33, 47)),
                                         ("unet3d", (1, 1, 6, 20, 18))])
def test_ugs_heads_give_three_channels_and_every_parameter_a_gradient(name, shape):
    extra = {"patch_depth": 6, "patch_size": 20} if name == "unet3d" else {}
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, width=4, depth=2, heads="ugs", **extra))
    logits = model(torch.rand(shape))
    assert logits.shape == (shape[0], 3, *shape[2:])
    logits.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert not torch.isnan(logits).any()


def test_the_consensus_head_starts_as_the_plain_models_head():
    torch.manual_seed(0)
    plain = build_model(ModelConfig(name="unet2d", width=4, depth=2))
    torch.manual_seed(0)
    ugs = build_model(ModelConfig(name="unet2d", width=4, depth=2, heads="ugs"))
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(ugs(x)[:, :1], plain(x))


def test_target_ugs_builds_the_ugs_heads():
    model_cfg, train_cfg, _ = configs_from_options({"target": "ugs"})
    assert (model_cfg.heads, train_cfg.target) == ("ugs", "ugs")
    assert configs_from_options({})[0].heads == "consensus"


def test_ugs_loss_on_a_hand_example():
    # One pixel: logits 0 (p = 1/2) on every head; targets consensus 1, intersection 0, union 1.
    logits, target = torch.zeros(1, 3, 1, 1), torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    bce = math.log(2)  # BCE of p = 1/2 against either 0 or 1
    dice = 1 - (2 * 0.5 + 1) / (0.5 + 1 + 1)  # soft Dice with smooth 1: p = 1/2, t = 1
    expected = (0.7 * dice + 0.3 * bce) + UGS_HEAD_WEIGHT * (bce + bce)
    assert float(UGSLoss(DiceBCELoss(0.7, 0.3))(logits, target)) == pytest.approx(expected, rel=1e-6)


def test_soft_targets_in_dice_and_bce():
    # p = sigmoid(0) = 1/2 on two pixels, soft target (1, 1/3): Dice and BCE follow their formulas.
    logits, target = torch.zeros(1, 1, 1, 2), torch.tensor([1.0, 1 / 3]).view(1, 1, 1, 2)
    dice = 1 - (2 * (0.5 * 1 + 0.5 / 3) + 1) / (1.0 + 4 / 3 + 1)
    bce = math.log(2)  # -(t log p + (1 - t) log(1 - p)) = log 2 for p = 1/2 whatever t
    assert float(DiceBCELoss(1.0, 0.0)(logits, target)) == pytest.approx(dice, rel=1e-6)
    assert float(DiceBCELoss(0.0, 1.0)(logits, target)) == pytest.approx(bce, rel=1e-6)


def test_band_is_union_minus_intersection_clipped():
    probs = torch.tensor([[0.5, 0.5], [0.2, 0.9], [0.7, 0.4]])  # consensus, intersection, union per voxel
    torch.testing.assert_close(band(probs), torch.tensor([0.5, 0.0]))


def save_ugs_run(run_dir, layout: StoreLayout):
    """A run folder with a small randomly initialised ugs dual encoder."""
    torch.manual_seed(0)
    model_cfg = ModelConfig(width=4, depth=2, heads="ugs")
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"model": asdict(model_cfg)}))
    atomic_save(checkpoint_payload(build_model(model_cfg), model_cfg, layout, epoch=1, state={}), run_dir / "best.pt")
    return run_dir


def test_predict_uncertainty_writes_a_float_map_on_the_source_grid(tmp_path):
    hu, _ = phantom(shape=(20, 18, 7))
    scan = save_nifti(tmp_path / "scan.nii.gz", hu, ras_affine((0.8, 0.9, 2.5)))
    run = save_ugs_run(tmp_path / "run", StoreLayout(size=16))
    out = tmp_path / "pred.nii.gz"
    result = CliRunner().invoke(model_app, ["predict", str(run), str(scan), str(out), "--uncertainty",
                                            "--device", "cpu"])
    assert result.exit_code == 0, result.output
    band_map, source = nib.load(uncertainty_path(out)), nib.load(scan)
    assert uncertainty_path(out).name == "pred_uncertainty.nii.gz"
    assert band_map.shape == source.shape and np.allclose(band_map.affine, source.affine)
    values = np.asarray(band_map.dataobj)
    assert values.dtype == np.float32 and values.min() >= 0 and values.max() <= 1
    assert set(np.unique(np.asarray(nib.load(out).dataobj))) <= {0, 1}  # the consensus mask as before


def test_uncertainty_on_a_run_without_ugs_heads_is_a_one_line_error(tmp_path):
    hu, _ = phantom(shape=(20, 18, 7))
    scan = save_nifti(tmp_path / "scan.nii.gz", hu, ras_affine())
    run = save_random_run(tmp_path / "run", StoreLayout(size=16))
    result = CliRunner().invoke(model_app, ["predict", str(run), str(scan), str(tmp_path / "p.nii.gz"),
                                            "--uncertainty", "--device", "cpu"])
    assert result.exit_code != 0
    assert "--uncertainty needs a run trained with --target ugs" in one_line_error(result)
