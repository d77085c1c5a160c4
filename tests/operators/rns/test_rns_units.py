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
