"""Device augmentation: identity at zero ranges, image and mask move together, masks stay binary, seeded."""
from __future__ import annotations

import torch

from ctmodel.augment import AugmentConfig, augment_batch

torch.set_num_threads(1)
IDENTITY = AugmentConfig(flip_p=0.0, rotation_deg=0.0, scale=(1.0, 1.0), contrast=(1.0, 1.0), brightness=0.0)
GEOMETRY_ONLY = AugmentConfig(contrast=(1.0, 1.0), brightness=0.0)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and blob masks (B=4, 32x40)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 3, 32, 40, generator=g)
    y = torch.zeros(4, 1, 32, 40)
    y[:, :, 8:20, 5:18] = 1.0
    return x, y


def test_zero_ranges_leave_the_batch_unchanged():
    x, y = batch()
    ax, ay = augment_batch(x, y, torch.Generator().manual_seed(0), IDENTITY)
    torch.testing.assert_close(ax, x, atol=1e-5, rtol=0)
    assert torch.equal(ay, y)


def test_certain_flip_mirrors_image_and_mask_left_right_together():
    x, y = batch()
    cfg = AugmentConfig(flip_p=1.0, rotation_deg=0.0, scale=(1.0, 1.0), contrast=(1.0, 1.0), brightness=0.0)
    ax, ay = augment_batch(x, y, torch.Generator().manual_seed(0), cfg)
    torch.testing.assert_close(ax, x.flip(-1), atol=1e-5, rtol=0)
    assert torch.equal(ay, y.flip(-1))


def test_rotated_masks_stay_binary_and_aligned_with_the_image():
    _, y = batch()
    x = y.repeat(1, 3, 1, 1)  # the image is the mask: after the same warp they must still coincide
    ax, ay = augment_batch(x, y, torch.Generator().manual_seed(3), GEOMETRY_ONLY)
    assert set(ay.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(ay, y)
    image_mask = ax[:, 1:2] > 0.5
    iou = (image_mask & ay.bool()).sum() / (image_mask | ay.bool()).sum()
    assert iou > 0.9


def test_intensity_jitter_keeps_values_in_unit_range_and_is_seeded():
    x, y = batch()
    first = augment_batch(x, y, torch.Generator().manual_seed(5))
    again = augment_batch(x, y, torch.Generator().manual_seed(5))
    other = augment_batch(x, y, torch.Generator().manual_seed(6))
    assert 0.0 <= first[0].min() and first[0].max() <= 1.0
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
