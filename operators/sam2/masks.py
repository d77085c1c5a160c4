"""The SAM 2 mask operator: object masks for an image, as COCO RLE with box and quality scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.modeling.sam2_base import SAM2Base

from maskdex.operators.common import rle as rle_codec
from maskdex.operators.common.device import autocast, resolve_device
from maskdex.operators.common.image_input import as_rgb_uint8


@dataclass(frozen=True)
class MaskSettings:
    """Automatic mask generation settings; the defaults are the indexing defaults of design.md."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    min_area: int = 64
    max_masks: int = 64

    def __post_init__(self):
        for name in ("points_per_side", "points_per_batch", "max_masks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_area < 0:
            raise ValueError(f"min_area must be >= 0, got {self.min_area}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def replace(self, **changes) -> "MaskSettings":
        return MaskSettings(**{**asdict(self), **changes})


@dataclass(frozen=True)
class Region:
    rle: dict  # {"size": [h, w], "counts": str}
    bbox: tuple[int, int, int, int]  # x, y, w, h in pixels of the image given
    area: int
    predicted_iou: float
    stability_score: float

    @property
    def quality(self) -> float:
        return self.predicted_iou * self.stability_score


class SAM2MaskGenerator:
    """Wraps sam2's stock automatic mask generator for any model `image_size` (`--amg stock`; the
    default is fast_masks.FastSAM2MaskGenerator, which gives the same masks faster).

    Regions come back sorted by predicted_iou x stability_score (best first), with at least
    `min_area` pixels, at most `max_masks` of them. Area and box are computed from the RLE itself,
    so they always agree with what the RLE decodes to.
    """

    def __init__(self, model: SAM2Base, settings: MaskSettings = MaskSettings(), *,
                 device: str | torch.device = "auto", dtype: str | None = "bfloat16"):
        self.device = resolve_device(device)
        self.dtype = dtype
        self.settings = settings
        self.model = model.to(self.device).eval()
        self._generator = SAM2AutomaticMaskGenerator(
            self.model,
            points_per_side=settings.points_per_side,
            points_per_batch=settings.points_per_batch,
            pred_iou_thresh=settings.pred_iou_thresh,
            stability_score_thresh=settings.stability_score_thresh,
            box_nms_thresh=settings.box_nms_thresh,
            output_mode="coco_rle",
        )
        # SAM2ImagePredictor hard-codes the backbone feature sizes of a 1024 input; a model built
        # for another image_size needs them at 1/4, 1/8 and 1/16 of that size.
        size = int(self.model.image_size)
        self._generator.predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]

    def generate_batch(self, images) -> list[list[Region]]:
        """The stock generator takes one image at a time."""
        return [self.generate(image) for image in images]

    def generate(self, image) -> list[Region]:
        rgb = as_rgb_uint8(image)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            records = self._generator.generate(rgb)
        regions = []
        for record in records:
            rle = {"size": [int(s) for s in record["segmentation"]["size"]],
                   "counts": _as_str(record["segmentation"]["counts"])}
            area = rle_codec.area(rle)
            if area < max(self.settings.min_area, 1):
                continue
            regions.append(Region(
                rle=rle,
                bbox=tuple(rle_codec.bbox(rle)),
                area=area,
                predicted_iou=float(record["predicted_iou"]),
                stability_score=float(record["stability_score"]),
            ))
        regions.sort(key=lambda region: region.quality, reverse=True)
        return regions[: self.settings.max_masks]


def _as_str(counts) -> str:
    return counts.decode("ascii") if isinstance(counts, bytes) else str(counts)
