"""GET /images/{image_id}/segmentation: a stored corpus segmentation (`maskdex segment-index`), answered in the
shape of POST /segment's answer, so a client (and the page) reads both alike.

Query parameters: set (required), and to choose among several runs: classes (comma-separated or a
JSON list, in label-id order), mode, seed, shots_only. Several matching runs: the newest that
succeeded. Bad parameters are a 400 naming them; no such segmentation, or one that failed, a 404
(the latter with its cause).
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from maskdex.jobs.serve.inputs import BadInput, check_image_id, class_list, form_bool
from maskdex.pipelines.fewshot.request import MODES

PARAMS = ("set", "classes", "mode", "seed", "shots_only")


def parse_params(query: dict[str, str]) -> dict:
    unknown = sorted(set(query) - set(PARAMS))
    if unknown:
        raise BadInput(f"unknown query parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMS)}")
    set_name = (query.get("set") or "").strip()
    if not set_name:
        raise BadInput("set is missing: name the support set the images were segmented with (?set=NAME)")
    mode = query.get("mode")
    if mode is not None and mode not in MODES:
        raise BadInput(f"mode must be one of {', '.join(MODES)}, got {mode[:40]!r}")
    seed = query.get("seed")
    if seed is not None:
        try:
            seed = int(seed)
        except ValueError:
            raise BadInput(f"seed must be a whole number, got {seed[:40]!r}") from None
    shots_only = None if query.get("shots_only") is None else form_bool(query["shots_only"], "shots_only")
    return {"set_name": set_name, "classes": class_list(query.get("classes")), "mode": mode, "seed": seed,
            "shots_only": shots_only}


def stored_segmentation(store, image_id: str, params: dict) -> dict:
    """The answer for one image from a SegmentationStore (None: the database has no segmentations)."""
    from maskdex.storage.schemas import OK  # here: the storage package opens LanceDB, which the ingress does not load

    check_image_id(image_id)
    what = f"image {image_id} with set {params['set_name']!r}"
    if store is None:
        raise BadInput(f"no segmentation of {what}: this database has none (run `maskdex segment-index`)", 404)
    rows = [row for row in store.find(image_id, set_name=params["set_name"], classes=params["classes"],
                                      mode=params["mode"])
            if all(params[name] is None or row[name] == params[name] for name in ("seed", "shots_only"))]
    if not rows:
        raise BadInput(f"no segmentation of {what}" + (" and these settings" if len(
            [v for v in params.values() if v is not None]) > 1 else ""), 404)
    ok = [row for row in rows if row["status"] == OK]
    if not ok:
        raise BadInput(f"segmenting {what} failed: {rows[0]['error']}", 404)
    return answer(ok[0])


def answer(row: dict) -> dict:
    from maskdex.operators.common import rle
    from maskdex.pipelines.fewshot.outputs import colours

    classes = list(row["classes"])
    labels = np.asarray(Image.open(io.BytesIO(row["labels_png"])))
    fractions = {name: round(float(share), 6) for name, share in zip(classes, row["pixel_fractions"])}
    return {
        "image_id": row["image_id"], "set": row["set_name"], "classes": classes, "mode": row["mode"],
        "models": row["models"], "seed": row["seed"], "shots_only": row["shots_only"], "width": row["width"],
        "height": row["height"], "regions": row["regions"], "pixel_fractions": fractions,
        "found": sorted((name for name, share in fractions.items() if share > 0), key=lambda name: -fractions[name]),
        "visual_support": list(row["visual_support"]), "text_support": list(row["text_support"]),
        "used_fallback": row["used_fallback"], "segmented_at": row["segmented_at"].isoformat(),
        "colours": colours(len(classes)).tolist(),
        "labels_png": base64.b64encode(row["labels_png"]).decode("ascii"),
        "masks": {name: rle.encode(labels == index) for index, name in enumerate(classes)},
    }
