"""The fast automatic mask generator against sam2's stock one, and its RLE against pycocotools.

Random weights leave every mask logit inside (-1, 1), so every stability score would be 0 and the
stability filter would drop all or nothing: the models here scale their mask hypernetworks' output
layer (seeded, deterministic), which spreads the logits so that both quality filters cut through
the candidates. Their masks are scattered and their boxes span the image, so box NMS at any
threshold under 1 keeps one mask: the match tests run NMS at 1.0 (it still orders the candidates).

Why the fast masks can differ at all, in float32 on the CPU: the encoder and decoder run on other
batch shapes than the stock generator's (a batch of images, larger point batches), which moves the
last bits of some logits; a pixel whose upsampled logit sits within that rounding of 0 (the mask),
1 or -1 (stability) can flip, and two candidates with near-equal quality can swap places at the
max_masks cut. At batch shapes equal to stock's the masks are bit for bit the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from maskdex.operators.common import rle as rle_codec
from maskdex.operators.common import rle_torch
from maskdex.operators.registry.presets import SAM2_PRESETS, SAM2Spec, build_sam2_model, mask_generator
from maskdex.operators.sam2.fast_masks import FastSAM2MaskGenerator
from maskdex.operators.sam2.masks import SAM2MaskGenerator
from maskdex.operators.metrics.mask_match import match_regions

LOGIT_SCALE = 20.0
HIERA_T_IOU_THRESH = 0.49
HIERA_T_STABILITY_THRESH = 0.4


def _scaled(model):
    with torch.no_grad():
        for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(LOGIT_SCALE)
            mlp.layers[-1].bias.mul_(LOGIT_SCALE)
    return model


@pytest.fixture(scope="module")
def tiny_model():
    return _scaled(build_sam2_model(SAM2_PRESETS["tiny"]))


def _settings(**changes):
    base = dict(points_per_side=8, pred_iou_thresh=0.5, stability_score_thresh=0.3, box_nms_thresh=1.0,
                max_masks=100_000, min_area=0)
    return SAM2_PRESETS["tiny"].mask_settings.replace(**{**base, **changes})


def _photos(photos):
    """Three sizes and aspects: square 512 x 512, landscape 400 x 600, portrait 451 x 300."""
    return {"astronaut": photos["astronaut"], "coffee": photos["coffee"],
            "chelsea-portrait": np.ascontiguousarray(photos["chelsea"].transpose(1, 0, 2))}


def _assert_same_masks(stock, fast, what):
    match = match_regions(stock, fast)
    assert match.share >= 0.98, f"{what}: {match}"
    assert abs(match.got - match.expected) <= 0.02 * match.expected, f"{what}: {match}"
    assert match.worst_score_gap <= 1e-3, f"{what}: {match}"
    return match


# --- RLE, boxes and areas against pycocotools ---------------------------------------------------

def _reference_masks():
    rng = np.random.default_rng(0)
    masks = [rng.random((37, 53)) < p for p in (0.0, 1.0, 0.5, 0.03, 0.97)]
    corner = np.zeros((37, 53), bool)
    corner[0, 0] = True  # starts on a foreground pixel: COCO counts then lead with 0
    last = np.zeros((37, 53), bool)
    last[-1, -1] = True
    blob = np.zeros((37, 53), bool)
    blob[5:30, 10:50] = True
    return np.stack(masks + [corner, last, blob])


def test_device_rle_boxes_and_areas_equal_pycocotools():
    masks = _reference_masks()
    chars, lengths = rle_torch.encode(torch.as_tensor(masks))
    strings = rle_torch.split(chars.numpy(), lengths.numpy())
    boxes, areas = rle_torch.boxes_and_areas(torch.as_tensor(masks))
    for index, mask in enumerate(masks):
        reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert strings[index] == reference["counts"].decode("ascii"), index
        assert boxes[index].tolist() == coco_mask.toBbox(reference).tolist(), index
        assert int(areas[index]) == int(coco_mask.area(reference)), index


def test_device_rle_of_long_runs_equals_pycocotools():
    # 700 x 900: counts past 2**15 take 4 characters, and the difference coding goes negative
    mask = np.zeros((700, 900), bool)
    mask[3:690, 2:890] = True
    mask[100:200, 300:301] = False
    chars, lengths = rle_torch.encode(torch.as_tensor(mask[None]))
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle_torch.split(chars.numpy(), lengths.numpy()) == [reference["counts"].decode("ascii")]


def test_host_batch_encoder_equals_pycocotools_one_by_one():
    masks = np.concatenate([_reference_masks()] * 40)  # > 255 masks: pycocotools' area() overflows there
    rles, areas, boxes = rle_codec.encode_batch(masks)
    for index, mask in enumerate(masks):
        assert rles[index] == rle_codec.encode(mask)
        assert areas[index] == rle_codec.area(rles[index])
        assert list(boxes[index]) == rle_codec.bbox(rles[index])


# --- the fast generator against the stock one ------------------------------------------------------

def test_fast_gives_stock_masks_on_a_small_photo(tiny_model, photos):
    image = photos["coffee"][:120, :160]
    stock = SAM2MaskGenerator(tiny_model, _settings(), device="cpu").generate(image)
    fast = FastSAM2MaskGenerator(tiny_model, _settings(), device="cpu").generate(image)
    assert 20 < len(stock) < 192, "both quality filters must cut through the candidates"
    # Same batch shapes as stock (one image, 64 points): the same bits, so the same masks exactly.
    assert [r.rle for r in fast] == [r.rle for r in stock]
    assert [(r.bbox, r.area, r.predicted_iou, r.stability_score) for r in fast] == \
        [(r.bbox, r.area, r.predicted_iou, r.stability_score) for r in stock]


def test_device_rle_path_gives_the_host_paths_regions(tiny_model, photos):
    image = photos["chelsea"][:150, :200]
    host = FastSAM2MaskGenerator(tiny_model, _settings(), device="cpu", device_rle=False).generate(image)
    device = FastSAM2MaskGenerator(tiny_model, _settings(), device="cpu", device_rle=True).generate(image)
    assert host and device == host


def test_an_image_batch_gives_each_images_masks(tiny_model, photos):
    images = [photos["coffee"][:120, :160], photos["chelsea"][:90, :200], photos["camera"][:100, :100]]
    generator = FastSAM2MaskGenerator(tiny_model, _settings(), device="cpu", decoder_batch=48)
    batched = generator.generate_batch(images)
    stock = SAM2MaskGenerator(tiny_model, _settings(), device="cpu")
    assert len(batched) == 3
    for index, (image, regions) in enumerate(zip(images, batched)):
        _assert_same_masks(stock.generate(image), regions, f"image {index}")


def test_cap_area_floor_and_order_follow_the_settings(tiny_model, photos):
    image = photos["coffee"][:120, :160]
    everything = FastSAM2MaskGenerator(tiny_model, _settings(), device="cpu").generate(image)
    qualities = [r.quality for r in everything]
    assert qualities == sorted(qualities, reverse=True)
    capped = FastSAM2MaskGenerator(tiny_model, _settings(max_masks=5), device="cpu").generate(image)
    assert capped == everything[:5]
    floor = sorted(r.area for r in everything)[len(everything) // 2]
    large = FastSAM2MaskGenerator(tiny_model, _settings(min_area=floor), device="cpu").generate(image)
    assert large == [r for r in everything if r.area >= floor]


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
def test_odd_inputs_give_stock_masks(tiny_model, image):
    settings = _settings(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    fast = FastSAM2MaskGenerator(tiny_model, settings, device="cpu").generate(image)
    assert fast and fast == SAM2MaskGenerator(tiny_model, settings, device="cpu").generate(image)


def test_no_survivor_gives_no_region(tiny_model, photos):
    assert FastSAM2MaskGenerator(tiny_model, _settings(pred_iou_thresh=1.0), device="cpu").generate(
        photos["coffee"][:50, :50]) == []


def test_presets_build_either_generator_and_refuse_others():
    assert isinstance(mask_generator("tiny", device="cpu"), FastSAM2MaskGenerator)
    assert isinstance(mask_generator("tiny", device="cpu", amg="stock"), SAM2MaskGenerator)
    with pytest.raises(ValueError, match="unknown mask generator 'turbo': choose one of fast, stock"):
        mask_generator("tiny", device="cpu", amg="turbo")
    with pytest.raises(ValueError, match="decoder_batch must be >= 1"):
        FastSAM2MaskGenerator(build_sam2_model(SAM2_PRESETS["tiny"]), device="cpu", decoder_batch=0)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # minutes on a quiet 2-core machine; far more on a shared one
def test_fast_matches_stock_on_photos_tiny(tiny_model, photos):
    """Hundreds of masks per photo (16 x 16 points, 768 candidates), one encoder batch for all three."""
    settings = _settings(points_per_side=16)
    stock = SAM2MaskGenerator(tiny_model, settings, device="cpu")
    fast = FastSAM2MaskGenerator(tiny_model, settings, device="cpu", decoder_batch=256)
    images = _photos(photos)
    for (name, image), regions in zip(images.items(), fast.generate_batch(list(images.values()))):
        match = _assert_same_masks(stock.generate(image), regions, name)
        assert match.expected >= 100, f"{name}: too few masks survive to compare ({match})"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fast_matches_stock_on_photos_hiera_t_1024(photos):
    """sam2.1 hiera-t at its real 1024 input (seeded random weights). Its decoder costs about 16x the
    tiny preset's per point on the CPU, so 8 x 8 points (192 candidates) on two photos, landscape
    and portrait, keep it to minutes."""
    spec = SAM2_PRESETS["sam2.1-hiera-t"]
    model = _scaled(build_sam2_model(SAM2Spec(spec.name, spec.config, spec.image_size)))
    assert model.image_size == 1024
    settings = _settings(pred_iou_thresh=HIERA_T_IOU_THRESH, stability_score_thresh=HIERA_T_STABILITY_THRESH)
    stock = SAM2MaskGenerator(model, settings, device="cpu")
    fast = FastSAM2MaskGenerator(model, settings, device="cpu", decoder_batch=96)
    images = {name: image for name, image in _photos(photos).items() if name != "astronaut"}
    total = 0
    for (name, image), regions in zip(images.items(), fast.generate_batch(list(images.values()))):
        total += _assert_same_masks(stock.generate(image), regions, name).expected
    assert total >= 150, f"too few masks survive to compare: {total}"
