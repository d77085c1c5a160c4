"""The Alpha-CLIP operator: embeddings for mask regions, whole images and text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from maskdex.operators.common import rle as rle_codec
from maskdex.operators.alpha_clip.model import AlphaCLIP
from maskdex.operators.common.device import autocast, resolve_device
from maskdex.operators.common.image_input import as_rgb_uint8
from maskdex.operators.alpha_clip.crops import crop_inputs, full_image_window, region_window
from maskdex.operators.common.text_features import embed_texts


class AlphaCLIPEncoder:
    """Embeds regions (image crop around the mask's box plus the mask as alpha), whole images and text.

    `context` is the margin around a region's box as a fraction of its longer side; None embeds
    every region on the full image (the mask alone says where the region is).
    Every output is L2-normalised float32 on the CPU.
    """

    def __init__(
        self,
        model: AlphaCLIP,
        tokenizer,
        *,
        device: str | torch.device = "auto",
        dtype: str | None = "bfloat16",
        context: float | None = 0.5,
        batch_size: int = 64,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.context = context
        self.batch_size = batch_size

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    def embed_image(self, image) -> torch.Tensor:
        """(D,) embedding of the whole image, alpha all ones."""
        return self.encode(*zip(self.image_input(image)))[0]

    def image_input(self, image) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's input (pixels, alpha) for a whole image, alpha all ones: what embed_image encodes."""
        rgb = as_rgb_uint8(image)
        height, width = rgb.shape[:2]
        ones = np.ones((height, width), dtype=bool)
        return crop_inputs(rgb, ones, full_image_window(height, width), self.model.input_size)

    def embed_regions(self, image, masks: Sequence, boxes: Sequence | None = None) -> torch.Tensor:
        """(N, D) embeddings for N masks of one image; each mask is an RLE dict or an H x W bool array."""
        rgb = as_rgb_uint8(image)
        height, width = rgb.shape[:2]
        if boxes is not None and len(boxes) != len(masks):
            raise ValueError(f"got {len(masks)} masks but {len(boxes)} boxes")
        pixels, alphas = [], []
        for index, mask in enumerate(masks):
            binary = rle_codec.decode(mask) if isinstance(mask, dict) else np.asarray(mask, dtype=bool)
            if binary.shape != (height, width):
                raise ValueError(f"mask {index} has shape {binary.shape}, image is {(height, width)}")
            crop, alpha = self.region_input(rgb, binary, boxes[index] if boxes is not None else None)
            pixels.append(crop)
            alphas.append(alpha)
        if not pixels:
            return torch.empty(0, self.embed_dim)
        return self.encode(pixels, alphas)

    def region_input(self, rgb: np.ndarray, binary: np.ndarray, box=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's input (pixels, alpha) for one region of an RGB uint8 image: the window around its
        box (default: the mask's bounding box) with the mask as alpha, as embed_regions encodes it."""
        height, width = rgb.shape[:2]
        if self.context is None:
            window = full_image_window(height, width)
        else:
            box = box if box is not None else rle_codec.bbox(rle_codec.encode(binary))
            window = region_window(box, height, width, self.context)
        return crop_inputs(rgb, binary, window, self.model.input_size)

    def embed_texts(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            return embed_texts(self.model.encode_text, self.tokenizer, texts, templates, device=self.device)

    def encode(self, pixels: Sequence[torch.Tensor], alphas: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, D) embeddings of N inputs from image_input / region_input, in batches of batch_size (a
        service gathers the inputs of concurrent queries into one call)."""
        out = []
        with torch.inference_mode(), autocast(self.device, self.dtype):
            for start in range(0, len(pixels), self.batch_size):
                batch = torch.stack(pixels[start : start + self.batch_size]).to(self.device)
                alpha = torch.stack(alphas[start : start + self.batch_size]).to(self.device)
                out.append(self.model.encode_image(batch, alpha).float().cpu())
        return torch.cat(out)
