"""A batched, device-resident automatic mask generator that gives sam2's stock generator's masks.

What the stock `SAM2AutomaticMaskGenerator` computes, with maskdex's settings (one crop layer, no
hole or island removal, multimask output, no mask-to-mask refinement), for an image of H x W:
  1. the image resized to the model's S x S and encoded;
  2. a points_per_side^2 grid, decoded 64 points at a time into 3 masks each: S/4 x S/4 logits and a
     predicted IoU;
  3. every logit map upsampled (bilinear, align_corners=False) straight to H x W;
  4. candidates with predicted IoU <= pred_iou_thresh dropped (when the threshold is > 0);
  5. stability score = #(logit > 1) / #(logit > -1) on the upsampled logits; candidates under
     stability_score_thresh dropped (when > 0);
  6. masks = upsampled logits > 0, boxes from them, COCO RLE of every survivor;
  7. box NMS over the image's survivors, scored by predicted IoU;
then maskdex keeps masks of at least min_area pixels, best predicted IoU x stability first, at most
max_masks.

This generator computes the same things in the same order, differently arranged:
  - the encoder runs on a batch of images, the decoder on large point batches;
  - step 4 runs on the low-resolution output (it only reads the predicted IoU, so it is exact), and
    only its survivors are upsampled: the filters of step 5 and the boxes need the full-resolution
    logits, so those are computed chunk by chunk and dropped, keeping the low-resolution logits of
    the survivors;
  - after NMS, the area floor and the cap, only the masks kept are upsampled again and run-length
    encoded, on the device (maskdex.operators.common.rle_torch);
  - one host transfer per image carries the RLE strings, boxes, areas and scores.
The masks equal the stock ones up to float rounding: the encoder and decoder run on other batch
shapes, which changes the last bits of some logits and so, rarely, a pixel whose upsampled logit is
within a rounding error of a threshold.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base
from sam2.utils.amg import batched_mask_to_box, build_point_grid, calculate_stability_score
from sam2.utils.transforms import SAM2Transforms
from torchvision.ops import batched_nms

from maskdex.operators.common import rle as rle_codec
from maskdex.operators.common import rle_torch
from maskdex.operators.common.device import autocast, resolve_device
from maskdex.operators.common.image_input import as_rgb_uint8
from maskdex.operators.sam2.masks import MaskSettings, Region

# stock SAM2AutomaticMaskGenerator's defaults for what MaskSettings does not name
STABILITY_OFFSET = 1.0
MASK_THRESHOLD = 0.0


class FastSAM2MaskGenerator:
    """`generate(image)` and `generate_batch(images)` as SAM2MaskGenerator, for any model image_size.

    decoder_batch: points per decoder call (default 64 on the CPU, where larger batches only add
    memory traffic, 256 on CUDA). device_rle: run-length encode on the device (default: off on the
    CPU, on elsewhere). compile: torch.compile the image encoder and mask decoder (off by
    default: it did not pay on the CPU; on CUDA it is to be measured). `timings` accumulates seconds
    per step (encoder, decoder, filtering, upsampling, nms, rle) when `timed` is set; timing
    synchronises the device after each step, so leave it off outside benchmarks.
    """

    def __init__(self, model: SAM2Base, settings: MaskSettings = MaskSettings(), *,
                 device: str | torch.device = "auto", dtype: str | None = "bfloat16",
                 decoder_batch: int | None = None, compile: bool = False, device_rle: bool | None = None,
                 timed: bool = False):
        self.device = resolve_device(device)
        self.dtype = dtype
        self.settings = settings
        self.model = model.to(self.device).eval()
        size = int(self.model.image_size)
        self._feature_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        self._transforms = SAM2Transforms(resolution=size, mask_threshold=MASK_THRESHOLD)
        self._grid = build_point_grid(settings.points_per_side)
        if decoder_batch is not None and decoder_batch < 1:
            raise ValueError(f"decoder_batch must be >= 1, got {decoder_batch}")
        self.decoder_batch = decoder_batch or (256 if self.device.type == "cuda" else 64)
        # Full-resolution logits held at once while filtering: 64M values on CUDA, 16M on the CPU.
        self._pixel_budget = (1 << 26) if self.device.type == "cuda" else (1 << 24)
        self._encode_images = self.model.forward_image
        self._decode = self.model.sam_mask_decoder
        if compile:
            self._encode_images = torch.compile(self.model.forward_image)
            self._decode = torch.compile(self.model.sam_mask_decoder)
        # On the CPU the masks are in host memory already and pycocotools' C encoder is ~30x faster than
        # tensor ops; elsewhere encoding on the device saves moving K x H x W masks to the host.
        self.device_rle = self.device.type != "cpu" if device_rle is None else device_rle
        self.timed = timed
        self.timings: dict[str, float] = defaultdict(float)

    def generate(self, image) -> list[Region]:
        return self.generate_batch([image])[0]

    def generate_batch(self, images) -> list[list[Region]]:
        """Regions of each image, as SAM2MaskGenerator.generate gives them, one encoder call for all."""
        rgbs = [as_rgb_uint8(image) for image in images]
        if not rgbs:
            return []
        with torch.inference_mode():
            with autocast(self.device, self.dtype), self._step("encoder"):
                features = self._encode(rgbs)
            return [self._image_regions(features, index, rgb.shape[:2]) for index, rgb in enumerate(rgbs)]

    def _encode(self, rgbs: list[np.ndarray]) -> dict:
        batch = torch.stack([self._transforms(rgb) for rgb in rgbs]).to(self.device)
        backbone_out = self._encode_images(batch)
        _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        feats = [feat.permute(1, 2, 0).reshape(len(rgbs), -1, *size)
                 for feat, size in zip(vision_feats[::-1], self._feature_sizes[::-1])][::-1]
        return {"image_embed": feats[-1], "high_res_feats": feats[:-1]}

    def _image_regions(self, features: dict, index: int, hw: tuple[int, int]) -> list[Region]:
        settings = self.settings
        # The stock point arithmetic, step for step: grid x image size in float64, then float32,
        # normalised by the image size and scaled to the model's input.
        points = torch.as_tensor(self._grid * np.array(hw)[None, ::-1], dtype=torch.float32, device=self.device)
        points = self._transforms.transform_coords(points, normalize=True, orig_hw=hw)
        labels = torch.ones(len(points), dtype=torch.int, device=self.device)
        image_embed = features["image_embed"][index:index + 1]
        high_res = [level[index:index + 1] for level in features["high_res_feats"]]
        kept = defaultdict(list)
        for start in range(0, len(points), self.decoder_batch):
            batch_points = points[start:start + self.decoder_batch, None, :]
            with autocast(self.device, self.dtype), self._step("decoder"):
                sparse, dense = self.model.sam_prompt_encoder(
                    points=(batch_points, labels[start:start + len(batch_points), None]), boxes=None, masks=None)
                low_res, iou_preds, _, _ = self._decode(
                    image_embeddings=image_embed, image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
                    repeat_image=len(batch_points) > 1, high_res_features=high_res)
            low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1).float()
            if settings.pred_iou_thresh > 0.0:
                passed = iou_preds > settings.pred_iou_thresh
                low_res, iou_preds = low_res[passed], iou_preds[passed]
            self._filter_full_resolution(low_res, iou_preds, hw, kept)
        if not kept:
            return []
        low_res, iou_preds, stability, boxes, areas = (torch.cat(kept[key]) for key in
                                                      ("low_res", "iou", "stability", "boxes", "areas"))
        with self._step("nms"):
            order = batched_nms(boxes.float(), iou_preds, torch.zeros_like(iou_preds), settings.box_nms_thresh)
        order = order[areas[order] >= max(settings.min_area, 1)]
        quality = iou_preds[order].double() * stability[order].double()
        order = order[torch.sort(quality, descending=True, stable=True).indices][: settings.max_masks]
        with self._step("upsampling"):
            masks = self._upsample(low_res[order], hw) > MASK_THRESHOLD
        with self._step("rle"):
            if self.device_rle:
                return self._regions_from_device(masks, iou_preds[order], stability[order])
            rles, areas, boxes = rle_codec.encode_batch(masks.numpy())
            return _regions(rles, boxes, areas, iou_preds[order].tolist(), stability[order].tolist())

    def _regions_from_device(self, masks, iou_preds, stability) -> list[Region]:
        """RLE, boxes and areas computed on the device; one transfer brings them and the scores."""
        height, width = masks.shape[1:]
        chars, lengths = rle_torch.encode(masks)
        boxes, areas = rle_torch.boxes_and_areas(masks)
        numbers = torch.cat([boxes.double(), areas[:, None].double(), iou_preds[:, None].double(),
                             stability[:, None].double(), lengths[:, None].double()], 1)
        packed = torch.cat([numbers.flatten().view(torch.uint8), chars]).cpu().numpy()
        numbers = packed[: numbers.numel() * 8].view(np.float64).reshape(-1, 8)
        strings = rle_torch.split(packed[numbers.size * 8:], numbers[:, 7].astype(np.int64))
        rles = [{"size": [height, width], "counts": counts} for counts in strings]
        return _regions(rles, numbers[:, :4], numbers[:, 4], numbers[:, 5].tolist(), numbers[:, 6].tolist())

    def _filter_full_resolution(self, low_res, iou_preds, hw, kept) -> None:
        """Step 5 and the boxes of step 6, on the full-resolution logits, a chunk at a time."""
        chunk = max(1, self._pixel_budget // (hw[0] * hw[1]))
        for start in range(0, len(low_res), chunk):
            logits, ious = low_res[start:start + chunk], iou_preds[start:start + chunk]
            with self._step("upsampling"):
                upsampled = self._upsample(logits, hw)
            with self._step("filtering"):
                stability = calculate_stability_score(upsampled, MASK_THRESHOLD, STABILITY_OFFSET)
                if self.settings.stability_score_thresh > 0.0:
                    passed = stability >= self.settings.stability_score_thresh
                    logits, ious, stability, upsampled = logits[passed], ious[passed], stability[passed], upsampled[passed]
                masks = upsampled > MASK_THRESHOLD
                kept["low_res"].append(logits)
                kept["iou"].append(ious)
                kept["stability"].append(stability)
                kept["boxes"].append(batched_mask_to_box(masks))
                kept["areas"].append(masks.sum((1, 2)))

    @staticmethod
    def _upsample(low_res: torch.Tensor, hw) -> torch.Tensor:
        # float32, as the stock predictor's postprocess_masks, whatever the decoder's dtype
        return F.interpolate(low_res[:, None].float(), hw, mode="bilinear", align_corners=False)[:, 0]

    def _step(self, name: str):
        return _Timer(self, name) if self.timed else _NULL


def _regions(rles, boxes, areas, iou_preds, stability) -> list[Region]:
    return [Region(rle=rle, bbox=tuple(int(v) for v in box), area=int(area), predicted_iou=float(iou),
                   stability_score=float(stable))
            for rle, box, area, iou, stable in zip(rles, boxes, areas, iou_preds, stability)]


class _Timer:
    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __enter__(self):
        self._sync()
        self.started = time.perf_counter()

    def __exit__(self, *exc):
        self._sync()
        self.owner.timings[self.name] += time.perf_counter() - self.started

    def _sync(self):
        if self.owner.device.type == "cuda":
            torch.cuda.synchronize(self.owner.device)


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NULL = _Null()
