import numpy as np
import pytest
import torch
from PIL import Image

from maskdex.operators.common import rle as rle_codec
from maskdex.operators.common.image_input import BadImageError
from maskdex.operators.registry.presets import SAM2_PRESETS, build_sam2_model, load_sam2_checkpoint, mask_generator
from maskdex.operators.sam2.masks import MaskSettings, SAM2MaskGenerator
from maskdex.operators.registry.weights import BadCheckpointError


@pytest.fixture(scope="module")
def tiny_model():
    return build_sam2_model(SAM2_PRESETS["tiny"])


def _generator(model, **settings):
    return SAM2MaskGenerator(model, SAM2_PRESETS["tiny"].mask_settings.replace(**settings), device="cpu")


def _check_regions(regions, height, width):
    for region in regions:
        mask = rle_codec.decode(region.rle)
        assert mask.shape == (height, width)
        assert mask.sum() == region.area > 0
        ys, xs = np.nonzero(mask)
        assert region.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert 0.0 <= region.stability_score <= 1.0


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera", "logo"])
def test_regions_decode_to_masks_matching_their_area_and_box(tiny_model, photos, name):
    image = photos[name]
    regions = _generator(tiny_model).generate(image)
    assert regions, "the tiny preset keeps every mask, so a photo must give some"
    _check_regions(regions, *image.shape[:2])
    qualities = [r.quality for r in regions]
    assert qualities == sorted(qualities, reverse=True)


def test_cap_and_minimum_area_are_respected(tiny_model, photos):
    image = photos["chelsea"]
    everything = _generator(tiny_model, max_masks=1000).generate(image)
    assert len(everything) > 5
    areas = sorted(r.area for r in everything)
    threshold = areas[len(areas) // 2]
    capped = _generator(tiny_model, max_masks=3).generate(image)
    assert len(capped) == 3
    assert [r.rle for r in capped] == [r.rle for r in everything[:3]], "the cap keeps the best-quality masks"
    large = _generator(tiny_model, max_masks=1000, min_area=threshold).generate(image)
    assert large and all(r.area >= threshold for r in large)
    assert len(large) == sum(a >= threshold for a in areas)


@pytest.mark.parametrize(
    "image",
    [
        np.full((64, 1, 3), 128, np.uint8),  # one pixel wide
        np.random.default_rng(0).integers(0, 255, (8, 900, 3), dtype=np.uint8),  # very wide
        np.random.default_rng(1).integers(0, 255, (40, 30), dtype=np.uint8),  # grayscale
        np.random.default_rng(2).integers(0, 255, (40, 30, 4), dtype=np.uint8),  # RGBA
    ],
    ids=["1px-wide", "aspect-112", "grayscale", "rgba"],
)
def test_odd_inputs_work(tiny_model, image):
    regions = _generator(tiny_model, min_area=0).generate(image)
    assert regions, "the tiny preset keeps every mask, so an odd input must still give some"
    _check_regions(regions, image.shape[0], image.shape[1])


def test_palette_image_works(tiny_model):
    palette = Image.new("P", (48, 32))
    palette.putpalette([0, 0, 0, 255, 255, 0] + [0] * 762)
    palette.paste(1, (10, 5, 30, 25))
    regions = _generator(tiny_model, min_area=0).generate(palette)
    assert regions
    _check_regions(regions, 32, 48)


def test_unusable_input_is_a_clear_error(tiny_model):
    with pytest.raises(BadImageError, match="no pixels"):
        _generator(tiny_model).generate(np.zeros((0, 10, 3), np.uint8))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_masks must be >= 1"):
        MaskSettings(max_masks=0)
    with pytest.raises(ValueError, match="pred_iou_thresh must be in"):
        MaskSettings(pred_iou_thresh=1.5)


def test_checkpoint_in_released_layout_reproduces_masks(tmp_path, tiny_model, photos):
    with torch.no_grad():
        for parameter in tiny_model.parameters():  # make it differ from any freshly built model
            parameter.add_(0.01 * torch.randn_like(parameter))
    path = tmp_path / "sam2.pt"
    torch.save({"model": tiny_model.state_dict()}, path)
    fresh = build_sam2_model(SAM2_PRESETS["tiny"])
    load_sam2_checkpoint(fresh, path)
    image = photos["coffee"]
    expected = _generator(tiny_model).generate(image)
    assert [r.rle for r in _generator(fresh).generate(image)] == [r.rle for r in expected]


def test_mismatched_sam2_checkpoint_lists_keys(tmp_path, tiny_model):
    state = dict(tiny_model.state_dict())
    state.pop("sam_mask_decoder.iou_token.weight")
    path = tmp_path / "bad.pt"
    torch.save({"model": state}, path)
    with pytest.raises(BadCheckpointError, match="missing keys: sam_mask_decoder.iou_token.weight"):
        load_sam2_checkpoint(build_sam2_model(SAM2_PRESETS["tiny"]), path)


@pytest.mark.slow
def test_real_hiera_tiny_preset_loads_from_weights_dir(tmp_path, photos):
    """sam2.1-hiera-t at its real size: the released file name and {'model': ...} layout, found by the preset."""
    spec = SAM2_PRESETS["sam2.1-hiera-t"]
    from sam2.build_sam import build_sam2

    torch.manual_seed(123)
    source = build_sam2(spec.config, ckpt_path=None, device="cpu")
    torch.save({"model": source.state_dict()}, tmp_path / spec.checkpoint)
    generator = mask_generator("fast", weights=tmp_path, device="cpu", points_per_side=2)
    assert generator.model.image_size == 1024
    for key, value in source.state_dict().items():
        assert torch.equal(generator.model.state_dict()[key], value), key
    _check_regions(generator.generate(photos["coffee"][:200, :300]), 200, 300)
