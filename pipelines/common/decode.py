"""Bytes to a validated RGB image: EXIF orientation, mode conversion, pixel limit, resize for SAM 2 and
the masks found at that size back to the original's."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from maskdex.operators.common import rle as rle_codec
from maskdex.operators.common.image_input import as_rgb_uint8

DEFAULT_MAX_PIXELS = 100_000_000


class DecodeError(ValueError):
    """The bytes are not a usable image; the message names why."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """RGB uint8 H x W x 3, orientation applied. Raises DecodeError naming the cause."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
            image.load()
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DecodeError(f"decompression bomb guard: {error}") from error
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DecodeError(f"corrupt or truncated image: {error}") from error
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as error:  # a broken EXIF block should not lose an otherwise good image
        warnings.warn(f"ignoring unreadable EXIF orientation: {error}")
    if image.mode == "CMYK" or image.mode == "YCbCr":
        image = image.convert("RGB")
    try:
        return as_rgb_uint8(image)
    except ValueError as error:
        raise DecodeError(f"unsupported image ({image.mode} mode): {error}") from error


def resize_longest_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is at most max_side; SAM 2 works at a fixed size, so more is wasted transfer."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0))


def to_original_size(region: dict, size: tuple[int, int]) -> dict:
    """A region found on the downscaled working image (resize_longest_side), re-expressed in the original image's pixels."""
    if list(region["rle"]["size"]) == list(size):
        return region
    mask = rle_codec.decode(region["rle"])
    upscaled = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST))
    rle = rle_codec.encode(upscaled)
    return {**region, "rle": rle, "bbox": rle_codec.bbox(rle), "area": rle_codec.area(rle)}
