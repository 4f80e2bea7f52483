"""Networks: the input/output contract at odd sizes, parameter counts, gradient coverage, the fusion formula."""
from __future__ import annotations

import pytest
import torch

from test_blocks import residual_block_parameters
from ctmodel.config import ModelConfig
from ctmodel.losses import DiceBCELoss
from ctmodel.nets import build_model, count_parameters, level_channels

torch.set_num_threads(1)
SMALL = dict(width=4, depth=3)
MODELS = [ModelConfig(name="dual-encoder", **SMALL), ModelConfig(name="unet2d", **SMALL),
          ModelConfig(name="unet2d", context=3, **SMALL)]


@pytest.mark.parametrize("cfg", MODELS, ids=lambda c: f"{c.name}-ctx{c.context}")
def test_every_model_maps_a_stack_to_one_logit_map_at_odd_size(cfg):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 33, 47)
    assert build_model(cfg)(x).shape == (2, 1, 33, 47)


def test_default_dual_encoder_is_near_the_studys_1_6_million_parameters():
    cfg = ModelConfig()
    channels = level_channels(cfg)
    encoders = sum(residual_block_parameters(i, o) for cin in (1, 3)
                   for i, o in zip([cin, *channels[:-1]], channels))
    fusion = sum(2 + 9 * 2 * c * c + 2 * c for c in channels)
    decoder = sum(4 * channels[i + 1] * channels[i] + channels[i] + residual_block_parameters(2 * channels[i], channels[i])
                  for i in range(len(channels) - 1)) + channels[0] + 1
    params = count_parameters(build_model(cfg))
    assert params == encoders + fusion + decoder
    assert 1.3e6 < params < 1.9e6


def test_width_scales_parameters_quadratically():
    small = count_parameters(build_model(ModelConfig(width=8)))
    large = count_parameters(build_model(ModelConfig(width=16)))
    assert 3.8 < large / small < 4.1


@pytest.mark.parametrize("cfg", MODELS, ids=lambda c: f"{c.name}-ctx{c.context}")
def test_every_parameter_gets_a_finite_gradient(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    x, y = torch.rand(2, 3, 24, 40), (torch.rand(2, 1, 24, 40) > 0.7).float()
    DiceBCELoss()(model(x), y).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_fusion_alpha_and_res_scale_are_learned():
    model = build_model(ModelConfig(**SMALL))
    names = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad and p.ndim == 0}
    assert names == {"alpha", "res_scale"}
    assert len([n for n, _ in model.named_parameters() if n.endswith("alpha")]) == SMALL["depth"] + 1


def test_unet2d_with_context_1_ignores_the_neighbour_slices_and_dual_encoder_uses_them():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32)
    changed = x.clone()
    changed[:, [0, 2]] = torch.rand(1, 2, 32, 32)
    unet, dual = build_model(ModelConfig(name="unet2d", **SMALL)).eval(), build_model(ModelConfig(**SMALL)).eval()
    torch.testing.assert_close(unet(x), unet(changed))
    assert not torch.allclose(dual(x), dual(changed))


def test_bad_model_options_are_one_line_errors():
    from ctprep.errors import UsageError

    for bad in (dict(name="unet3d"), dict(width=0), dict(context=2), dict(depth=0)):
        with pytest.raises(UsageError, match="expected"):
            ModelConfig(**bad)
