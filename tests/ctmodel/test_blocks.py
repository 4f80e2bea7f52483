"""Blocks: ResidualConvBlock's parameters and residual path, the FusionBlock formula."""
from __future__ import annotations

import torch

from ctmodel.blocks import FusionBlock, ResidualConvBlock
from ctmodel.nets import count_parameters

torch.set_num_threads(1)


def residual_block_parameters(cin: int, cout: int) -> int:
    """Two bias-free 3x3 convs, two affine InstanceNorms, and a 1x1 projection when channels change."""
    return 9 * cin * cout + 9 * cout * cout + 4 * cout + (cin * cout if cin != cout else 0)


def test_residual_block_has_two_convs_norms_and_projection():
    assert count_parameters(ResidualConvBlock(3, 8)) == residual_block_parameters(3, 8)
    assert count_parameters(ResidualConvBlock(8, 8)) == residual_block_parameters(8, 8)


def test_residual_block_adds_its_input_when_the_convs_output_zero():
    block = ResidualConvBlock(4, 4)
    with torch.no_grad():
        block.norm2.weight.zero_()
        block.norm2.bias.zero_()
    x = torch.randn(2, 4, 9, 11)
    torch.testing.assert_close(block(x), torch.nn.functional.leaky_relu(x, 0.01))


def test_fusion_block_follows_its_documented_formula():
    torch.manual_seed(0)
    block = FusionBlock(3)
    with torch.no_grad():
        block.alpha.fill_(0.7)
        block.res_scale.fill_(0.25)
    a_feat, b_feat = torch.rand(2, 3, 5, 6), torch.rand(2, 3, 5, 6)
    a = torch.sigmoid(torch.tensor(0.7))
    mixed = block.norm(torch.nn.functional.conv2d(torch.cat([a_feat, b_feat], 1), block.mix.weight, padding=1))
    expected = a * a_feat + (1 - a) * b_feat + 0.25 * mixed
    torch.testing.assert_close(block(a_feat, b_feat), expected)
