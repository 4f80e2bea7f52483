"""Building blocks of the U-Nets: the conv blocks (residual, idc), the fusions of the dual encoder, UpBlock,
Encoder, Decoder. The blocks and the encoder/decoder take ``dims`` = 2 (the 2.5D networks) or 3 (unet3d)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
UP = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


class ResidualConvBlock(nn.Module):
    """Two 3x3 (3x3x3 with dims=3) convs with InstanceNorm(affine) and LeakyReLU, plus the input (1x1-projected
    when channels change)."""

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float = 0.01, dims: int = 2) -> None:
        super().__init__()
        conv, norm = CONV[dims], NORM[dims]
        self.conv1 = conv(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = norm(out_channels, affine=True)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = norm(out_channels, affine=True)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)
        self.skip = (nn.Identity() if in_channels == out_channels
                     else conv(in_channels, out_channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.skip(x))


BAND_AXES = {2: ("w", "h"), 3: ("w", "h", "d")}  # the band branches of InceptionDWConv, one along each axis


def band_conv(group: int, band_kernel: int, axis: int, dims: int) -> nn.Module:
    """A depthwise band conv: ``band_kernel`` along spatial axis ``axis`` (counted from the last), 1 elsewhere."""
    kernel = [1] * dims
    kernel[dims - 1 - axis] = band_kernel
    return CONV[dims](group, group, tuple(kernel), padding=tuple(k // 2 for k in kernel), groups=group, bias=False)


class InceptionDWConv(nn.Module):
    """InceptionNeXt's token mixer: identity | depthwise k x k | 1 x band | band x 1, each on a share of the channels;
    with dims=3: identity | depthwise k x k x k cube | a band along each of W, H and D.

    Each conv branch takes ``max(1, int(channels * branch_ratio))`` channels, the identity the rest; bias-free
    (InstanceNorm follows in IDCBlock).
    """

    def __init__(self, channels: int, square_kernel: int = 3, band_kernel: int = 11,
                 branch_ratio: float = 0.125, dims: int = 2) -> None:
        super().__init__()
        group = max(1, int(channels * branch_ratio))
        branches = 1 + len(BAND_AXES[dims])
        if branches * group > channels:
            raise ValueError(f"InceptionDWConv needs {branches} or more channels ({branches} branches of 1), "
                             f"got {channels}")
        self.split = (channels - branches * group, *[group] * branches)
        self.square = CONV[dims](group, group, square_kernel, padding=square_kernel // 2, groups=group, bias=False)
        for axis, name in enumerate(BAND_AXES[dims]):  # band_w, band_h (, band_d): the 2-D names old weights use
            setattr(self, f"band_{name}", band_conv(group, band_kernel, axis, dims))
        self.bands = [f"band_{name}" for name in BAND_AXES[dims]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_id, x_sq, *x_bands = torch.split(x, self.split, dim=1)
        bands = [getattr(self, name)(part) for name, part in zip(self.bands, x_bands)]
        return torch.cat([x_id, self.square(x_sq), *bands], dim=1)  # (B, C, [D,] H, W)


class IDCBlock(nn.Module):
    """The Inception depthwise block: act(IN(pw(act(IN(IDC(u))))) + u), u = P(x) (1x1-projected when channels change).

    A drop-in for ResidualConvBlock (same constructor, same shapes); docs/model.md gives the exact definition.
    """

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float = 0.01, dims: int = 2) -> None:
        super().__init__()
        conv, norm = CONV[dims], NORM[dims]
        self.project = (nn.Identity() if in_channels == out_channels
                        else conv(in_channels, out_channels, 1, bias=False))
        self.mixer = InceptionDWConv(out_channels, dims=dims)
        self.norm1 = norm(out_channels, affine=True)
        self.pointwise = conv(out_channels, out_channels, 1, bias=False)
        self.norm2 = norm(out_channels, affine=True)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.project(x)  # (B, C_in, H, W) -> (B, C_out, H, W)
        y = self.act(self.norm1(self.mixer(u)))
        y = self.norm2(self.pointwise(y))
        return self.act(y + u)


BlockFactory = Callable[..., nn.Module]  # (in_channels, out_channels, dims=2) -> block
BLOCK_TYPES: dict[str, BlockFactory] = {"residual": ResidualConvBlock, "idc": IDCBlock}


class FusionBlock(nn.Module):
    """Merge encoder A (centre slice) and B (stack) features of one level.

    fused = a * A + (1 - a) * B + res_scale * conv3x3(concat(A, B)),  a = sigmoid(alpha)

    ``alpha`` starts at 0 (an even blend), ``res_scale`` at 0.1 (the learned mixing term starts small).
    """

    def __init__(self, channels: int, res_scale: float = 0.1) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))
        self.res_scale = nn.Parameter(torch.tensor(float(res_scale)))
        self.mix = nn.Conv2d(2 * channels, channels, 3, padding=1, bias=False)
        self.norm = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, a_feat: torch.Tensor, b_feat: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.alpha)
        mixed = self.norm(self.mix(torch.cat([a_feat, b_feat], dim=1)))  # (B, 2C, H, W) -> (B, C, H, W)
        return a * a_feat + (1 - a) * b_feat + self.res_scale * mixed


class FixedFusion(nn.Module):
    """The plain even blend, nothing learned: fused = 0.5 * A + 0.5 * B."""

    def forward(self, a_feat: torch.Tensor, b_feat: torch.Tensor) -> torch.Tensor:
        return 0.5 * a_feat + 0.5 * b_feat


class ConcatFusion(nn.Module):
    """Concatenation and a bias-free 1x1 conv: fused = W @ concat(A, B), W: 2C -> C."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(2 * channels, channels, 1, bias=False)

    def forward(self, a_feat: torch.Tensor, b_feat: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([a_feat, b_feat], dim=1))  # (B, 2C, H, W) -> (B, C, H, W)


def make_fusion(kind: str, channels: int) -> nn.Module:
    """The fusion of one level named by ModelConfig.fusion (``bottleneck`` uses the learned FusionBlock)."""
    if kind == "fixed":
        return FixedFusion()
    if kind == "concat":
        return ConcatFusion(channels)
    return FusionBlock(channels)


class UpBlock(nn.Module):
    """Decoder step: 2x transposed-conv upsampling, concat with the skip, a conv block (ResidualConvBlock default)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int,
                 block: BlockFactory = ResidualConvBlock, dims: int = 2) -> None:
        super().__init__()
        self.up = UP[dims](in_channels, out_channels, 2, stride=2)
        self.block = block(out_channels + skip_channels, out_channels, dims=dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, C_out, 2H, 2W)
        return self.block(torch.cat([x, skip], dim=1))  # (B, C_out + C_skip, 2H, 2W) -> (B, C_out, 2H, 2W)


class Encoder(nn.Module):
    """A conv block per level (ResidualConvBlock default), 2x max-pooling between levels; returns every level's
    features."""

    def __init__(self, in_channels: int, channels: list[int], block: BlockFactory = ResidualConvBlock,
                 dims: int = 2) -> None:
        super().__init__()
        ins = [in_channels, *channels[:-1]]
        self.blocks = nn.ModuleList(block(i, o, dims=dims) for i, o in zip(ins, channels))
        self.pool = POOL[dims](2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level, block in enumerate(self.blocks):
            x = block(x if level == 0 else self.pool(x))
            features.append(x)
        return features


class Decoder(nn.Module):
    """Shared decoder: from the deepest features up, with a skip at every level, to one logit channel."""

    def __init__(self, channels: list[int], block: BlockFactory = ResidualConvBlock, dims: int = 2) -> None:
        super().__init__()
        self.ups = nn.ModuleList(UpBlock(channels[i + 1], channels[i], channels[i], block, dims)
                                 for i in reversed(range(len(channels) - 1)))
        self.head = CONV[dims](channels[0], 1, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, skip in zip(self.ups, reversed(features[:-1])):
            x = up(x, skip)
        return self.head(x)  # (B, 1, [D,] H, W) logits
