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


def encode_batch(masks: np.ndarray) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """(rles, areas, boxes) for K x H x W boolean masks in one pycocotools call each: the RLEs as
    encode() gives them, (K,) areas and (K, 4) x, y, w, h boxes as area() and bbox() give them."""
    if masks.ndim != 3:
        raise ValueError(f"expected K x H x W masks, got shape {masks.shape}")
    if not len(masks):
        return [], np.zeros(0, np.int64), np.zeros((0, 4), np.int64)
    # (K, W, H) C order is (H, W, K) Fortran order, the layout pycocotools reads.
    columns = np.ascontiguousarray(masks.transpose(0, 2, 1), dtype=np.uint8).transpose(2, 1, 0)
    encoded = coco_mask.encode(columns)
    rles = [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in encoded]
    # Areas from the masks: pycocotools 2.0.11's area() of more than 255 RLEs overflows (uint8 count).
    areas = masks.reshape(len(masks), -1).sum(1, dtype=np.int64)
    return rles, areas, np.rint(coco_mask.toBbox(encoded)).astype(np.int64)


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


def iou(rle: dict, others: list[dict]) -> np.ndarray:
    """(len(others),) IoU of one mask with each of others; all must have the same size."""
    for other in others:
        if list(other["size"]) != list(rle["size"]):
            raise ValueError(f"mask sizes differ: {list(rle['size'])} and {list(other['size'])}")
    if not others:
        return np.zeros(0)
    return np.asarray(coco_mask.iou([_coco(rle)], [_coco(o) for o in others], [0] * len(others)),
                      dtype=np.float64).reshape(len(others))


def from_segmentation(segmentation, height: int, width: int) -> dict:
    """A COCO annotation's segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError("empty polygon list")
        return _as_str_rle(coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width)))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE of size {list(segmentation['size'])} on an image of size {[height, width]}")
        return _as_str_rle(_coco(segmentation))
    raise ValueError(f"not a COCO segmentation (polygons or RLE): {str(segmentation)[:80]}")


def _as_str_rle(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
