"""The geometry of Alpha-CLIP inputs: one square window per region, applied identically to image and mask.

A region's window is centred on its box, with side max(w, h) * (1 + 2 * context) (at least
`min_side` pixels); "full image" is the square that letterboxes the whole image. Parts of a window
outside the image are filled with CLIP's mean colour (zero after normalisation) and mask 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from maskdex.operators.common.clip_models import CLIP_MEAN, CLIP_STD

ALPHA_MEAN = 0.5
ALPHA_STD = 0.26
_MEAN_RGB_U8 = np.array([round(255 * m) for m in CLIP_MEAN], dtype=np.uint8)


@dataclass(frozen=True)
class Window:
    """A square in image pixel coordinates; may extend past the image."""

    x0: int
    y0: int
    side: int


def full_image_window(height: int, width: int) -> Window:
    side = max(height, width)
    return Window(x0=(width - side) // 2, y0=(height - side) // 2, side=side)


def region_window(bbox_xywh, height: int, width: int, context: float, min_side: int = 16) -> Window:
    """The square around a box (x, y, w, h), enlarged by `context` times the longer box side on each side."""
    if context < 0:
        raise ValueError(f"context margin must be >= 0, got {context}")
    x, y, w, h = (float(v) for v in bbox_xywh)
    side = max(w, h) * (1.0 + 2.0 * context)
    side = int(math.ceil(max(side, float(min(min_side, max(height, width))), 1.0)))
    cx, cy = x + w / 2.0, y + h / 2.0
    return Window(x0=int(math.floor(cx - side / 2.0)), y0=int(math.floor(cy - side / 2.0)), side=side)


def _cut(array: np.ndarray, window: Window, fill) -> np.ndarray:
    """The window's pixels of an H x W (x C) array, padded with `fill` where it leaves the image."""
    height, width = array.shape[:2]
    out = np.empty((window.side, window.side) + array.shape[2:], dtype=array.dtype)
    out[...] = fill
    x0, y0 = max(window.x0, 0), max(window.y0, 0)
    x1, y1 = min(window.x0 + window.side, width), min(window.y0 + window.side, height)
    if x1 > x0 and y1 > y0:
        out[y0 - window.y0 : y1 - window.y0, x0 - window.x0 : x1 - window.x0] = array[y0:y1, x0:x1]
    return out


def crop_inputs(image: np.ndarray, mask: np.ndarray, window: Window, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-normalised pixels (3, size, size) and normalised alpha (1, size, size) for one window.

    The image is resized bicubically and the mask bilinearly, both with antialiasing, by the same
    transform, so a mask pixel lands where its image pixel does.
    """
    pixels = torch.from_numpy(_cut(image, window, _MEAN_RGB_U8)).permute(2, 0, 1)[None].float() / 255.0
    alpha = torch.from_numpy(_cut(mask.astype(np.uint8), window, 0))[None, None].float()
    if window.side != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        alpha = F.interpolate(alpha, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    pixels = pixels.clamp_(0.0, 1.0)[0]
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    pixels = (pixels - mean) / std
    alpha = (alpha.clamp_(0.0, 1.0)[0] - ALPHA_MEAN) / ALPHA_STD
    return pixels, alpha


def denormalise(pixels: torch.Tensor, alpha: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Back to an RGB uint8 crop and a [0, 1] mask: for inspection and tests."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    rgb = ((pixels * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return rgb, (alpha[0] * ALPHA_STD + ALPHA_MEAN).numpy()
