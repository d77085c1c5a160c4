"""Search results as a COCO instances document: what labelling tools (CVAT, FiftyOne, Label Studio) import.

One COCO image per returned image (file_name is its uri), one annotation per returned region with its
RLE as the segmentation, and the query as the one category. maskdex's own ids and the scores ride along
in extra fields, which COCO readers ignore.
"""

from __future__ import annotations

from datetime import datetime, timezone

from maskdex.operators.common import rle as rle_codec


def coco_instances(results: list[dict], category: str) -> dict:
    """The COCO document for search results (each result's `region`, as search returns it)."""
    images, annotations = [], []
    for number, result in enumerate(results, 1):
        region = result["region"]
        height, width = (int(side) for side in region["rle"]["size"])
        images.append({"id": number, "file_name": result["uri"], "width": width, "height": height,
                       "maskdex_image_id": result["image_id"]})
        annotations.append({"id": number, "image_id": number, "category_id": 1, "iscrowd": 0,
                            "segmentation": {"size": [height, width], "counts": region["rle"]["counts"]},
                            "area": int(rle_codec.area(region["rle"])), "bbox": [int(v) for v in region["bbox"]],
                            "score": float(region["score"]), "maskdex_region_id": region["region_id"]})
    return {"info": {"description": f"maskdex search results for {category}",
                     "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": category, "supercategory": "query"}]}


def query_label(text: str | None, like: str | None, image_name: str | None) -> str:
    """The category name a query gets: its text, then what its example was."""
    parts = [text.strip()] if text else []
    if like:
        parts.append(f"like {like}")
    if image_name:
        parts.append(f"like {image_name}")
    return " + ".join(parts) or "query"
