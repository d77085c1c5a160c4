"""One image as the in-process pipelines take it: a path or URI, file bytes, a numpy array or a PIL image."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from maskdex.operators.common.image_input import as_rgb_uint8
from maskdex.pipelines.common.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from maskdex.pipelines.common.sources import read_bytes


@dataclass(frozen=True)
class LoadedImage:
    rgb: np.ndarray  # H x W x 3 uint8, EXIF orientation applied
    # sha256 of the file bytes, the index's image_id; None for pixels handed over without a file.
    file_id: str | None
    uri: str | None

    @property
    def image_id(self) -> str:
        """file_id, else the sha256 of the pixels: a stable key either way."""
        if self.file_id is not None:
            return self.file_id
        header = f"{self.rgb.shape[0]}x{self.rgb.shape[1]}:".encode()
        return hashlib.sha256(header + np.ascontiguousarray(self.rgb).tobytes()).hexdigest()


def load_image(image, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Raises FileNotFoundError for a file that cannot be read, ValueError for one that is not an image."""
    if isinstance(image, (str, os.PathLike)):
        uri = os.fspath(image)
        try:
            data = read_bytes(uri)
        except OSError as error:
            raise FileNotFoundError(f"cannot read image {uri}: {error.strerror or error}") from error
    elif isinstance(image, (bytes, bytearray, memoryview)):
        uri, data = None, bytes(image)
    else:
        return LoadedImage(as_rgb_uint8(image), None, None)
    try:
        rgb = decode_image(data, max_pixels)
    except DecodeError as error:
        raise DecodeError(f"image {uri or '(bytes)'}: {error}") from None
    return LoadedImage(rgb, hashlib.sha256(data).hexdigest(), uri)
