"""Class lists and label maps of support examples, and the checks that keep bad ones out of the memory.

A label map is an H x W array of class indices into a class list; 255 marks pixels to ignore.
A class whose name starts with "@" is example-only (a personal instance such as "@my-backpack"):
its name means nothing to the text encoder, so RNS gives it the mean text feature of the others.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from maskdex.operators.common.labels import IGNORE_INDEX
from maskdex.pipelines.common.class_names import UNNAMED_PREFIX
_LABEL_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I")


def has_text_name(class_name: str) -> bool:
    return not class_name.startswith(UNNAMED_PREFIX)


def text_names(classes) -> list[str | None]:
    """What the text encoder gets per class: the name, or None for an example-only class."""
    return [name if has_text_name(name) else None for name in classes]


def check_set_name(set_name) -> str:
    if not isinstance(set_name, str) or not set_name.strip() or set_name != set_name.strip():
        raise ValueError(f"a support set name must be a non-blank string without surrounding spaces, got {set_name!r}")
    return set_name


def read_label_map(data: bytes) -> np.ndarray:
    """(H, W) int64 class indices from a single-channel PNG (8-bit, palette or 16-bit); ValueError otherwise."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise ValueError(f"label map must be a PNG, got {image.format or 'an unknown format'}")
            if image.mode not in _LABEL_MODES:
                raise ValueError(f"label map must hold one class index per pixel (a single-channel PNG), "
                                 f"got mode {image.mode}")
            return np.asarray(image, dtype=np.int64)
    except (OSError, SyntaxError) as error:
        raise ValueError(f"label map is not a readable PNG: {error}") from error


def label_array(label_map) -> np.ndarray:
    """A caller's label map (numpy array or PIL image) as (H, W) int64."""
    if isinstance(label_map, Image.Image):
        if label_map.mode not in _LABEL_MODES:
            raise ValueError(f"label map must be a single-channel image of class indices, got mode {label_map.mode}")
        label_map = np.asarray(label_map)
    array = np.asarray(label_map)
    if array.ndim != 2:
        raise ValueError(f"label map must be H x W, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"label map must hold integer class indices, got {array.dtype}")
    return array.astype(np.int64)


def label_problems(labels: np.ndarray, image_size: tuple[int, int], n_classes: int) -> list[str]:
    """What is wrong with an example's label map, as messages (empty when nothing is)."""
    height, width = image_size
    if labels.shape != (height, width):
        return [f"label map is {labels.shape[1]}x{labels.shape[0]} but the image is {width}x{height} (width x height)"]
    values = np.unique(labels)
    outside = [int(v) for v in values if (v < 0 or v >= n_classes) and v != IGNORE_INDEX]
    if outside:
        shown = ", ".join(map(str, outside[:10])) + (", ..." if len(outside) > 10 else "")
        return [f"label map holds class ids {shown} outside the class list (0..{n_classes - 1}; "
                f"{IGNORE_INDEX} = ignore)"]
    if values.size == 0 or (values == IGNORE_INDEX).all():
        return [f"label map labels no pixel with a class (all {IGNORE_INDEX} = ignore)"]
    return []


def class_pixel_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes,) labelled pixels per class; the labels must have passed label_problems."""
    return np.bincount(labels[labels != IGNORE_INDEX].ravel(), minlength=n_classes)[:n_classes]
