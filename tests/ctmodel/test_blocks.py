"""Blocks: the residual and Inception depthwise blocks' parameters, branches and residual paths; the fusion formulas."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ctmodel.blocks import (BLOCK_TYPES, ConcatFusion, FixedFusion, FusionBlock, IDCBlock, InceptionDWConv,
                            ResidualConvBlock)
from ctmodel.nets import count_parameters

torch.set_num_threads(1)


def residual_block_parameters(cin: int, cout: int) -> int:
    """Two bias-free 3x3 convs, two affine InstanceNorms, and a 1x1 projection when channels change."""
    return 9 * cin * cout + 9 * cout * cout + 4 * cout + (cin * cout if cin != cout else 0)


def idc_branch_channels(channels: int) -> int:
    """InceptionNeXt's branch share: an eighth of the channels per conv branch, at least one."""
    return max(1, int(channels * 0.125))


def idc_block_parameters(cin: int, cout: int) -> int:
    """1x1 projection when channels change; bias-free depthwise 3x3, 1x11 and 11x1 on one share each; two affine
    InstanceNorms; a bias-free pointwise conv."""
    return (cin * cout if cin != cout else 0) + (9 + 11 + 11) * idc_branch_channels(cout) + 4 * cout + cout * cout


BLOCK_PARAMETERS = {"residual": residual_block_parameters, "idc": idc_block_parameters}


@pytest.mark.parametrize("kind", sorted(BLOCK_TYPES))
@pytest.mark.parametrize("cin, cout", [(1, 12), (3, 12), (12, 24), (24, 12), (96, 96)])
def test_block_parameters_follow_their_documented_layers(kind, cin, cout):
    assert count_parameters(BLOCK_TYPES[kind](cin, cout)) == BLOCK_PARAMETERS[kind](cin, cout)


@pytest.mark.parametrize("kind", sorted(BLOCK_TYPES))
def test_blocks_keep_the_spatial_size_and_give_out_channels_at_odd_sizes(kind):
    x = torch.rand(2, 3, 33, 47)
    assert BLOCK_TYPES[kind](3, 8)(x).shape == (2, 8, 33, 47)


def silence_last_norm(block):
    """Zero the block's last InstanceNorm affine, so its conv path outputs exactly zero."""
    with torch.no_grad():
        block.norm2.weight.zero_()
        block.norm2.bias.zero_()
    return block


def test_residual_block_adds_its_input_when_the_convs_output_zero():
    block = silence_last_norm(ResidualConvBlock(4, 4))
    x = torch.randn(2, 4, 9, 11)
    torch.testing.assert_close(block(x), F.leaky_relu(x, 0.01))


def test_idc_block_adds_its_projected_input_when_the_pointwise_path_outputs_zero():
    block = silence_last_norm(IDCBlock(5, 8))
    x = torch.randn(2, 5, 9, 11)
    torch.testing.assert_close(block(x), F.leaky_relu(F.conv2d(x, block.project.weight), 0.01))


def test_idc_branches_spread_an_impulse_over_a_square_a_row_and_a_column():
    mixer = InceptionDWConv(16)  # 2 channels per branch, 10 identity
    assert mixer.split == (10, 2, 2, 2)
    with torch.no_grad():
        for conv in (mixer.square, mixer.band_w, mixer.band_h):
            conv.weight.fill_(1.0)
    x = torch.zeros(1, 16, 21, 21)
    x[..., 10, 10] = 1.0  # one impulse in every channel, at the centre
    support = [torch.nonzero(channel).tolist() for channel in mixer(x)[0]]
    square = [[r, c] for r in range(9, 12) for c in range(9, 12)]
    row, column = [[10, c] for c in range(5, 16)], [[r, 10] for r in range(5, 16)]
    assert support == [[[10, 10]]] * 10 + [square] * 2 + [row] * 2 + [column] * 2


@settings(max_examples=30, deadline=None)
@given(channels=st.integers(3, 200))
def test_idc_split_gives_each_branch_an_eighth_and_the_identity_the_rest(channels):
    mixer = InceptionDWConv(channels)
    group = idc_branch_channels(channels)
    assert mixer.split == (channels - 3 * group, group, group, group)
    x = torch.rand(1, channels, 4, 5)
    y = mixer(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, :channels - 3 * group], x[:, :channels - 3 * group])  # identity share untouched


def test_idc_refuses_fewer_channels_than_branches():
    with pytest.raises(ValueError, match="3 or more channels"):
        InceptionDWConv(2)


def test_fusion_block_follows_its_documented_formula():
    torch.manual_seed(0)
    block = FusionBlock(3)
    with torch.no_grad():
        block.alpha.fill_(0.7)
        block.res_scale.fill_(0.25)
    a_feat, b_feat = torch.rand(2, 3, 5, 6), torch.rand(2, 3, 5, 6)
    a = torch.sigmoid(torch.tensor(0.7))
    mixed = block.norm(F.conv2d(torch.cat([a_feat, b_feat], 1), block.mix.weight, padding=1))
    expected = a * a_feat + (1 - a) * b_feat + 0.25 * mixed
    torch.testing.assert_close(block(a_feat, b_feat), expected)


def test_fixed_fusion_is_the_even_blend_and_learns_nothing():
    a_feat, b_feat = torch.rand(2, 3, 5, 6), torch.rand(2, 3, 5, 6)
    torch.testing.assert_close(FixedFusion()(a_feat, b_feat), (a_feat + b_feat) / 2)
    assert count_parameters(FixedFusion()) == 0


def test_concat_fusion_is_one_1x1_conv_of_the_concatenation():
    torch.manual_seed(0)
    block = ConcatFusion(3)
    a_feat, b_feat = torch.rand(2, 3, 5, 6), torch.rand(2, 3, 5, 6)
    weight = block.mix.weight[:, :, 0, 0]  # (C, 2C): the first C columns weigh A, the last C weigh B
    expected = (torch.einsum("oc,bchw->bohw", weight[:, :3], a_feat)
                + torch.einsum("oc,bchw->bohw", weight[:, 3:], b_feat))
    torch.testing.assert_close(block(a_feat, b_feat), expected)
    assert count_parameters(block) == 2 * 3 * 3
