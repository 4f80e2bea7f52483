"""unet3d: shapes, parameter counts, gradients, the 3-D Inception depthwise branches, patch sampling, the
Gaussian sliding window (equal to whole-volume inference) and a tiny train -> evaluate -> predict run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

from cli import model_app
from conftest import one_line_error, phantom, ras_affine, save_nifti
from ctmodel.batches import (EpochSamples, iterate_batches, load_resident, n_batches, patch_shape, patches_per_step,
                             volumetric_subset)
from ctmodel.blocks import BLOCK_TYPES, IDCBlock, InceptionDWConv
from ctmodel.checkpoint import load_run
from ctmodel.config import BLOCKS, ModelConfig, TrainConfig
from ctmodel.inference import (gaussian_weights, is_volumetric, predict_volume, sliding_window_logits,
                               window_starts)
from ctmodel.losses import DiceBCELoss
from ctmodel.nets import build_model, count_parameters, level_channels, pad_patch
from ctmodel.train import train
from ctprep.errors import UsageError
from ctprep.store import SliceStore

torch.set_num_threads(1)
SMALL = dict(name="unet3d", width=4, depth=2)


def residual3d_parameters(cin: int, cout: int) -> int:
    """Two bias-free 3x3x3 convs, two affine InstanceNorms, a 1x1x1 projection when channels change."""
    return 27 * cin * cout + 27 * cout * cout + 4 * cout + (cin * cout if cin != cout else 0)


def idc3d_parameters(cin: int, cout: int) -> int:
    """1x1x1 projection when channels change; depthwise 3x3x3 cube and three 11-long bands (one per axis) on an
    eighth of the channels each; two affine InstanceNorms; a pointwise conv."""
    return (cin * cout if cin != cout else 0) + (27 + 3 * 11) * max(1, cout // 8) + 4 * cout + cout * cout


BLOCK3D_PARAMETERS = {"residual": residual3d_parameters, "idc": idc3d_parameters}


def expected_unet3d_parameters(cfg: ModelConfig) -> int:
    """One encoder on 1 channel, the decoder (2x2x2 transposed convs with bias + blocks) and the 1x1x1 head."""
    channels, block = level_channels(cfg), BLOCK3D_PARAMETERS[cfg.block]
    encoder = sum(block(i, o) for i, o in zip([1, *channels[:-1]], channels))
    decoder = sum(8 * channels[i + 1] * channels[i] + channels[i] + block(2 * channels[i], channels[i])
                  for i in range(len(channels) - 1))
    return encoder + decoder + channels[0] + 1


@pytest.mark.parametrize("block", BLOCKS)
def test_unet3d_maps_a_patch_to_one_logit_volume_at_odd_sizes(block):
    torch.manual_seed(0)
    model = build_model(ModelConfig(block=block, **SMALL))
    assert model(torch.rand(2, 1, 5, 9, 13)).shape == (2, 1, 5, 9, 13)
    assert is_volumetric(model) and not is_volumetric(build_model(ModelConfig(width=4, depth=2)))


@settings(max_examples=60, deadline=None)
@given(sizes=st.tuples(*[st.integers(1, 70)] * 3), depth=st.integers(1, 4))
def test_patches_are_padded_to_the_fewest_multiples_that_leave_two_bottleneck_voxels(sizes, depth):
    multiple = 2**depth
    padded, original = pad_patch(torch.zeros(1, 1, *sizes), multiple)
    assert original == sizes
    shape = padded.shape[-3:]
    assert all(n % multiple == 0 and n >= s for n, s in zip(shape, sizes))
    assert (shape[0] // multiple) * (shape[1] // multiple) * (shape[2] // multiple) >= 2
    fewest = [max(multiple, -(-s // multiple) * multiple) for s in sizes]  # round each axis up to a multiple
    assert list(shape[:2]) == fewest[:2] and shape[2] in (fewest[2], fewest[2] + multiple)
    assert shape[2] == fewest[2] or fewest == [multiple] * 3


def test_a_single_voxel_patch_still_runs():
    torch.manual_seed(0)
    assert build_model(ModelConfig(**SMALL))(torch.rand(1, 1, 1, 1, 1)).shape == (1, 1, 1, 1, 1)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("width", [4, 12])
def test_unet3d_parameters_follow_the_layers(block, width):
    cfg = ModelConfig(name="unet3d", block=block, width=width)
    assert count_parameters(build_model(cfg)) == expected_unet3d_parameters(cfg)


@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("cin, cout", [(1, 12), (12, 24), (96, 96)])
def test_3d_blocks_follow_their_documented_layers(kind, cin, cout):
    assert count_parameters(BLOCK_TYPES[kind](cin, cout, dims=3)) == BLOCK3D_PARAMETERS[kind](cin, cout)


@pytest.mark.parametrize("block", BLOCKS)
def test_every_unet3d_parameter_gets_a_finite_gradient(block):
    torch.manual_seed(0)
    model = build_model(ModelConfig(block=block, **SMALL))
    x, y = torch.rand(2, 1, 6, 10, 12), (torch.rand(2, 1, 6, 10, 12) > 0.7).float()
    DiceBCELoss()(model(x), y).backward()  # the loss sums over every voxel of the 5-D batch
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_3d_inception_branches_keep_the_identity_share_and_each_band_stays_on_its_axis():
    torch.manual_seed(0)
    mixer = InceptionDWConv(16, dims=3)  # 2 channels per branch: identity 8, cube 2, bands along W, H, D 2 each
    assert mixer.split == (8, 2, 2, 2, 2)
    impulse = torch.zeros(1, 16, 15, 15, 15)
    impulse[..., 7, 7, 7] = 1.0
    with torch.no_grad():
        out = mixer(impulse)[0]
    torch.testing.assert_close(out[:8], impulse[0, :8])
    reach = {name: (out[c] != 0).nonzero() for name, c in [("cube", 8), ("w", 10), ("h", 12), ("d", 14)]}
    assert (reach["cube"] - 7).abs().max() <= 1  # 3x3x3
    for axis, name in enumerate(["d", "h", "w"]):  # tensor axes (D, H, W): a band moves only along its own axis
        moved = (reach[name] - 7).abs()
        assert moved[:, axis].max() == 5 and moved.sum(1).eq(moved[:, axis]).all()


def test_idc_3d_refuses_fewer_channels_than_branches_and_unet3d_idc_needs_width_4():
    with pytest.raises(ValueError, match="4 or more channels"):
        IDCBlock(3, 3, dims=3)
    with pytest.raises(UsageError, match="width of 4 or more"):
        ModelConfig(name="unet3d", block="idc", width=3)


@pytest.mark.parametrize("options, message", [
    (dict(name="unet3d", context=3), "--context 3: expected --model unet2d"),
    (dict(name="unet3d", fusion="concat"), "--fusion concat: expected --model dual-encoder"),
    (dict(name="unet2d", patch_depth=16), "--patch-depth 16: expected --model unet3d"),
    (dict(patch_size=64), "--patch-size 64: expected --model unet3d"),
    (dict(name="unet3d", patch_depth=0), "--patch-depth 0: expected a value above 0"),
])
def test_options_unet3d_does_not_take_and_patch_options_of_other_models_are_refused(options, message):
    with pytest.raises(UsageError, match=message):
        ModelConfig(**options)


def test_configs_saved_before_unet3d_load_with_the_default_patch():
    old = {"name": "unet2d", "width": 12, "depth": 4, "context": 1, "block": "residual", "fusion": "learned"}
    assert ModelConfig.from_dict(old) == ModelConfig(name="unet2d")


# ---------------------------------------------------------------- sliding window


@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 300), window=st.integers(1, 64), overlap=st.sampled_from([0.0, 0.25, 0.5, 0.75]))
def test_windows_cover_the_axis_with_steps_no_longer_than_the_overlap_allows(length, window, overlap):
    starts = window_starts(length, window, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] == max(0, length - window)  # the last window ends at the volume's end
    steps = np.diff(starts)
    assert (steps <= max(1, int(window * (1 - overlap)))).all() and (steps > 0).all()


def test_gaussian_weights_peak_at_the_centre_with_sigma_an_eighth_of_the_window():
    weights = gaussian_weights((9, 17, 33))
    assert weights.shape == (9, 17, 33) and float(weights.max()) == 1.0 and weights[4, 8, 16] == 1.0
    torch.testing.assert_close(weights, weights.flip(0).flip(1).flip(2))
    expected = np.exp(-0.5 * (16 / (33 / 8)) ** 2)  # the edge of the 33-long axis, 16 voxels from the centre
    assert float(weights[4, 8, 0]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("block", BLOCKS)
def test_one_window_covering_the_volume_equals_whole_volume_inference(block):
    torch.manual_seed(0)
    model = build_model(ModelConfig(block=block, **SMALL)).eval()
    volume = torch.rand(7, 20, 18)
    with torch.no_grad():
        whole = model(volume[None, None])[0, 0]
    torch.testing.assert_close(sliding_window_logits(model, volume, (7, 20, 18)), whole, rtol=0, atol=1e-6)


class VoxelNet(nn.Module):
    """A per-voxel network (1x1x1 conv then tanh): its logit at a voxel depends on that voxel only."""

    volumetric = True
    window = (4, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)) * 3


def test_many_overlapping_gaussian_windows_equal_whole_volume_inference_for_a_per_voxel_network():
    torch.manual_seed(0)
    model, volume = VoxelNet(), torch.rand(11, 21, 19)
    starts = [window_starts(n, w) for n, w in zip(volume.shape, model.window)]
    assert [len(s) for s in starts] == [-(-(n - w) // (w // 2)) + 1 for n, w in zip(volume.shape, model.window)]
    assert [len(s) for s in starts] == [5, 5, 4]  # 100 overlapping windows, with unequal overlaps at the ends
    with torch.no_grad():
        whole = model(volume[None, None])[0, 0]
    for batch in (1, 7):
        torch.testing.assert_close(sliding_window_logits(model, volume, model.window, batch), whole,
                                   rtol=0, atol=1e-5)


def test_volumes_thinner_than_the_window_are_padded_with_air_and_cropped_back():
    model, volume = VoxelNet(), torch.rand(2, 5, 6)
    with torch.no_grad():
        whole = model(volume[None, None])[0, 0]
    torch.testing.assert_close(sliding_window_logits(model, volume, model.window), whole, rtol=0, atol=1e-6)


def test_predict_volume_uses_the_sliding_window_for_unet3d():
    torch.manual_seed(0)
    model = build_model(ModelConfig(patch_depth=4, patch_size=8, **SMALL)).eval()
    volume = torch.rand(9, 12, 12)
    expected = torch.sigmoid(sliding_window_logits(model, volume, (4, 8, 8)))
    torch.testing.assert_close(predict_volume(model, volume, batch_size=8, precision="fp32"), expected)
    assert model.training is False


# ---------------------------------------------------------------- patches


@pytest.fixture
def resident(tiny_store):
    """The tiny store's five cases (9 slices of 16 x 16) resident on the CPU."""
    store = SliceStore.open(tiny_store)
    return store, load_resident(store, [f"case{i}" for i in range(5)], torch.device("cpu"), show_progress=False)


def test_patch_depth_window_is_centred_on_the_plan_slice_and_clamped_at_the_ends(resident):
    store, data = resident
    volume = torch.from_numpy(store.read_image("case1"))  # (9, 16, 16)
    case = data.position(["case1"] * 3)
    images, masks = data.patches(case, torch.tensor([4, 0, 8]), depth=5, size=16,
                                 generator=torch.Generator().manual_seed(0))
    assert images.shape == masks.shape == (3, 1, 5, 16, 16)
    torch.testing.assert_close(images[0, 0], volume[2:7])  # slice 4 at the window's centre (index 5 // 2 = 2)
    torch.testing.assert_close(images[1, 0], volume[0:5])  # clamped at the first slice
    torch.testing.assert_close(images[2, 0], volume[4:9])  # clamped at the last slice
    mask = torch.from_numpy(store.read_mask("case1")).float()
    torch.testing.assert_close(masks[0, 0], mask[2:7])


def test_cases_shorter_than_the_patch_are_padded_with_air_and_empty_mask(resident):
    store, data = resident
    images, masks = data.patches(data.position(["case2"]), torch.tensor([3]), depth=12, size=16,
                                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(images[0, 0, :9], torch.from_numpy(store.read_image("case2")))
    assert images[0, 0, 9:].eq(0).all() and masks[0, 0, 9:].eq(0).all()


def test_in_plane_crops_are_windows_of_the_slices_drawn_from_the_generator(resident):
    store, data = resident
    volume = torch.from_numpy(store.read_image("case0"))
    case, z = data.position(["case0"] * 6), torch.full((6,), 4)
    first = data.patches(case, z, depth=3, size=7, generator=torch.Generator().manual_seed(1))[0]
    again = data.patches(case, z, depth=3, size=7, generator=torch.Generator().manual_seed(1))[0]
    torch.testing.assert_close(first, again)
    windows = volume[3:6].unfold(1, 7, 1).unfold(2, 7, 1)  # (3, 10, 10, 7, 7): every 7 x 7 crop position
    for patch in first[:, 0]:
        hits = (windows - patch[:, None, None]).abs().amax(dim=(0, 3, 4)) == 0
        assert hits.any()


def test_epoch_batches_of_unet3d_are_patches_of_the_plan_rows(resident):
    _store, data = resident
    cfg = ModelConfig(patch_depth=4, patch_size=64, **SMALL)
    assert patch_shape(cfg, 16) == (4, 16) and patch_shape(ModelConfig(), 16) is None
    samples = EpochSamples(case_pos=data.position(["case0", "case1", "case2"]), slice_index=torch.tensor([1, 4, 7]))
    batches = list(iterate_batches(data, samples, 2, torch.Generator().manual_seed(0), patch=patch_shape(cfg, 16)))
    assert [tuple(x.shape) for x, _ in batches] == [(2, 1, 4, 16, 16), (1, 1, 4, 16, 16)]


@pytest.mark.parametrize("batch_size, depth", [(4, 4), (4, 2), (4, 1), (8, 32), (16, 3)])
def test_a_unet3d_epoch_makes_the_2d_models_steps_of_about_batch_size_slices(resident, batch_size, depth):
    _store, data = resident
    rows = [(f"case{i % 5}", i % 9) for i in range(10)]
    samples = EpochSamples(case_pos=data.position([c for c, _ in rows]), slice_index=torch.tensor([z for _, z in rows]))
    subset = volumetric_subset(samples, batch_size, depth, torch.Generator().manual_seed(0))
    per_step = patches_per_step(batch_size, depth)
    assert per_step == max(1, batch_size // depth)  # at least one patch; per_step * depth <= batch_size otherwise
    assert n_batches(len(subset), per_step) == n_batches(len(rows), batch_size)  # the 2.5D models' step count
    picked = list(zip(subset.case_pos.tolist(), subset.slice_index.tolist()))
    original = list(zip(samples.case_pos.tolist(), samples.slice_index.tolist()))
    assert len(set(picked)) == len(picked) and set(picked) <= set(original)  # plan rows, none twice


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def unet3d_run(tmp_path_factory):
    """One epoch of a tiny unet3d (augmentation on) on a 16 x 16 store of five 9-slice phantoms."""
    from conftest import build_store

    cases = {f"case{i}": (*phantom(seed=i), ras_affine()) for i in range(5)}
    splits = {"case0": "train", "case1": "train", "case2": "train", "case3": "val", "case4": "test"}
    store = build_store(tmp_path_factory.mktemp("s") / "store.zarr", cases, splits)
    run_dir = tmp_path_factory.mktemp("r") / "run"
    result = train(store, ModelConfig(patch_depth=4, patch_size=12, **SMALL),
                   TrainConfig(epochs=1, batch_size=4, seed=0), out=run_dir)
    return store, result


def test_unet3d_trains_validates_and_saves_its_patch_with_the_checkpoint(unet3d_run):
    _store, result = unet3d_run
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["model"]["name"] == "unet3d" and config["model"]["patch_depth"] == 4
    assert result.summary["parameters"] == expected_unet3d_parameters(ModelConfig(**SMALL))
    assert np.isfinite(result.rows[0]["train_loss"]) and np.isfinite(result.rows[0]["val_loss"])
    assert 0.0 <= result.rows[0]["val_dice_3d"] <= 1.0
    loaded = load_run(result.run_dir, "best")
    assert loaded.model.window == (4, 12, 12) and is_volumetric(loaded.model)


def test_unet3d_run_evaluates_and_predicts_through_the_cli(unet3d_run, tmp_path):
    store, result = unet3d_run
    scores = tmp_path / "scores.csv"
    evaluated = CliRunner().invoke(model_app, ["evaluate", str(result.run_dir), str(store), "--device", "cpu",
                                               "--grid", "store", "--out", str(scores)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "case4" in scores.read_text()
    hu, _ = phantom()
    source = save_nifti(tmp_path / "in" / "scan.nii.gz", hu, ras_affine(), dtype=np.int16)
    output = tmp_path / "scan_mask.nii.gz"
    predicted = CliRunner().invoke(model_app, ["predict", str(result.run_dir), str(source), str(output),
                                               "--device", "cpu"])
    assert predicted.exit_code == 0, predicted.output
    import nibabel as nib
    assert nib.load(str(output)).shape == hu.shape


def test_train_cli_refuses_context_for_unet3d_in_one_line(tiny_store, tmp_path):
    result = CliRunner().invoke(model_app, ["train", str(tiny_store), "--model", "unet3d", "--context", "3",
                                            "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "--context 3: expected --model unet2d" in one_line_error(result)
    assert not (tmp_path / "run").exists()
