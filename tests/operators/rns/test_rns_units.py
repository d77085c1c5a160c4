import pytest
import torch
import torch.nn.functional as F

from maskdex.operators.rns.method import RNSSettings, rns_segment
from maskdex.operators.rns.memory import SupportMemory
from maskdex.operators.rns.units import TestUnits, paint_regions, patch_units, region_units, upsample_argmax

X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
FEATURES = X.reshape(2, 2, 2)  # 2x2 patches


def test_masks_are_painted_smallest_first_so_larger_ones_win():
    small = torch.zeros(4, 4, dtype=torch.bool)
    small[0, 0] = True  # inside the large mask: overwritten, it vanishes
    large = torch.zeros(4, 4, dtype=torch.bool)
    large[:2, :2] = True
    side = torch.zeros(4, 4, dtype=torch.bool)
    side[:, 3] = True
    region_map = paint_regions(torch.stack([large, small, side]))
    # mask ids 0 (large), 2 (side) and 3 (uncovered) remain, renumbered 0, 1, 2
    assert region_map.tolist() == [[0, 0, 2, 1], [0, 0, 2, 1], [2, 2, 2, 1], [2, 2, 2, 1]]
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        paint_regions(large)


def test_region_feature_weights_patches_by_the_regions_pixel_share():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :] = True  # patches 0 and 1 fully
    mask[2, 0] = True  # one pixel of patch 2
    units = region_units(FEATURES, mask[None])
    assert units.features.shape == (2, 2)
    torch.testing.assert_close(units.features[0], F.normalize(4 * X[0] + 4 * X[1] + X[2], dim=0))
    torch.testing.assert_close(units.features[1], F.normalize(3 * X[2] + 4 * X[3], dim=0))
    labels = units.labels(torch.tensor([[0.1, 0.9], [0.8, 0.2]]))
    assert labels.tolist() == [[1] * 4, [1] * 4, [1, 0, 0, 0], [0] * 4]


def test_patch_scores_are_upsampled_bilinearly_before_the_argmax():
    scores = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    direct = F.interpolate(scores.permute(2, 0, 1)[None], size=(11, 13), mode="bilinear",
                           align_corners=False)[0].argmax(dim=0)
    assert torch.equal(upsample_argmax(scores, (11, 13), chunk=2), direct)
    assert torch.equal(upsample_argmax(scores, (11, 13)), direct)
    units = patch_units(torch.randn(3, 5, 4), (11, 13))
    assert torch.equal(units.labels(scores.reshape(15, 7)), direct)
    # at the grid's own size the argmax is the patch's own
    assert torch.equal(upsample_argmax(scores, (3, 5)), scores.argmax(dim=-1))


def test_scores_on_a_padded_grid_are_cropped_back_to_the_image_before_the_last_upsampling():
    # a 2x3 grid of 8-pixel patches over a 16x24 input whose top-left 12x20 is the resized image
    scores = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    planes = scores.permute(2, 0, 1)[None]
    on_input = F.interpolate(planes, size=(16, 24), mode="bilinear", align_corners=False)[..., :12, :20]
    expected = F.interpolate(on_input, size=(30, 50), mode="bilinear", align_corners=False)[0].argmax(dim=0)
    units = patch_units(torch.randn(2, 3, 5), (30, 50), input_size=(16, 24), resized_size=(12, 20))
    got = units.labels(scores.reshape(6, 4))
    assert torch.equal(got, expected)
    assert torch.equal(upsample_argmax(scores, (30, 50), chunk=3, via=((16, 24), (12, 20))), expected)
    # spreading the padded grid over the whole image instead shifts the boundaries
    assert not torch.equal(got, upsample_argmax(scores, (30, 50)))
    with pytest.raises(ValueError, match="go together"):
        patch_units(torch.randn(2, 3, 5), (30, 50), input_size=(16, 24))
    with pytest.raises(ValueError, match="exceeds"):
        patch_units(torch.randn(2, 3, 5), (30, 50), input_size=(16, 24), resized_size=(12, 28))


def test_regions_pool_only_the_patches_the_image_covers_on_a_padded_grid():
    # the image (4x4 pixels) covers 1 x 1.5 patches of a 2x2 grid: its right quarter lies in column 1
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    units = region_units(FEATURES, mask, covered=(1.0, 1.5))
    # pixel columns 0-2 lie in patch column 0 (x + 0.5) * 1.5 / 4 < 1, column 3 in patch column 1
    torch.testing.assert_close(units.features[0], F.normalize(12 * X[0] + 4 * X[1], dim=0))
    with pytest.raises(ValueError, match="cover part of the grid"):
        region_units(FEATURES, mask, covered=(3.0, 1.0))


def test_units_check_their_shapes():
    with pytest.raises(ValueError, match="exactly one of"):
        TestUnits(torch.zeros(4, 2), (2, 2))
    units = patch_units(FEATURES, (4, 4))
    with pytest.raises(ValueError, match=r"\(4, C\) scores"):
        units.labels(torch.zeros(3, 2))


def test_rns_in_region_mode_paints_each_region_with_its_class():
    prototypes = F.normalize(torch.tensor([[2.0, 1.0], [1.0, -1.0], [-1.0, 0.0]]), dim=-1)
    memory = SupportMemory(prototypes, torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]))
    text = prototypes
    left = torch.zeros(4, 4, dtype=torch.bool)
    left[:, :2] = True
    # uniform relevance: in two dimensions the relevance softmax would all but drop class 2
    settings = RNSSettings(steps=100, lr=0.05, use_relevance=False)
    result = rns_segment(region_units(FEATURES, left[None]), memory, text, settings)
    # left half pools patches 0 and 2 into (2, 1)/|.|, the class-0 prototype; right half: (-1, 1) -> class 2
    assert result.labels[:, :2].unique().tolist() == [0]
    assert result.labels[:, 2:].unique().tolist() == [2]
