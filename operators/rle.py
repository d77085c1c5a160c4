"""COCO run-length encoding of binary masks (pycocotools), with counts kept as a str so they serialise."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_mask


def encode(mask: np.ndarray) -> dict:
    """{'size': [h, w], 'counts': str} for an H x W boolean mask."""
    if mask.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _coco(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return coco_mask.frPyObjects(rle, *rle["size"])
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode(rle: dict) -> np.ndarray:
    return coco_mask.decode(_coco(rle)).astype(bool)


def area(rle: dict) -> int:
    return int(coco_mask.area(_coco(rle)))


def bbox(rle: dict) -> list[int]:
    """(x, y, w, h) in pixels, w and h counting columns and rows covered (0 for an empty mask)."""
    return [int(round(v)) for v in coco_mask.toBbox(_coco(rle))]
