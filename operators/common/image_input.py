"""Bringing whatever image a caller holds to the one form the models take: RGB uint8, H x W x 3."""

from __future__ import annotations

import numpy as np
from PIL import Image


class BadImageError(ValueError):
    """The input cannot be understood as an image."""


def as_rgb_uint8(image) -> np.ndarray:
    """Grayscale, RGBA, palette, 16-bit and float inputs become RGB uint8; anything else is a clear error.

    Transparent pixels are composited onto white so that they do not turn into black objects.
    """
    if isinstance(image, Image.Image):
        image = _pil_to_array(image)
    if not isinstance(image, np.ndarray):
        raise BadImageError(f"expected a numpy array or a PIL image, got {type(image).__name__}")
    array = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    if array.ndim == 2:
        array = array[:, :, None].repeat(3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise BadImageError(f"expected an H x W, H x W x 3 or H x W x 4 image, got shape {tuple(image.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise BadImageError(f"image has no pixels (shape {tuple(image.shape)})")
    if array.dtype == np.uint8 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    unit = array.astype(np.float32) / _full_scale(array)
    if not np.isfinite(unit).all():
        raise BadImageError("image has NaN or infinite pixel values")
    rgb = unit[:, :, :3]
    if array.shape[2] == 4:
        alpha = np.clip(unit[:, :, 3:4], 0.0, 1.0)
        rgb = rgb * alpha + (1.0 - alpha)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.array(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return np.array(image.convert("RGBA"))
    return np.array(image.convert("RGB"))


def _full_scale(array: np.ndarray) -> float:
    """The value that means 'full intensity' for this array's pixel type."""
    if array.dtype == np.bool_:
        return 1.0
    if array.dtype == np.uint8:
        return 255.0
    if array.dtype == np.uint16:
        return 65535.0
    if np.issubdtype(array.dtype, np.integer):
        # PIL reads 16-bit PNGs as int32; wider integer images are treated the same way.
        return 65535.0 if array.max(initial=0) > 255 else 255.0
    if np.issubdtype(array.dtype, np.floating):
        return 1.0 if np.nanmax(array, initial=0.0) <= 1.0 else 255.0
    raise BadImageError(f"unsupported pixel type {array.dtype}")
