"""A retrieval index whose rankings are planted, with hand-computed metrics (see the evaluation tests).

The tiny preset's embeddings are random, so the index is written directly: each region embedding is
built to have chosen cosines with the tiny text embeddings of the two queries, which fixes every
ranking; the masks are chosen to match the ground truth exactly, partly or not at all.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from maskdex.operators.common import rle as rle_codec
from maskdex.operators.registry.presets import alpha_clip_encoder, embedding_dim, get_preset
from maskdex.storage.index_store import IndexStore

SIZE = 20
QUERIES = ("cat", "a red car")


def _box(y0, y1, x0, x1) -> dict:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y0:y1, x0:x1] = True
    return rle_codec.encode(mask)


INSTANCE = {  # image -> (query, ground-truth mask)
    "a": ("cat", _box(2, 10, 2, 10)),
    "b": ("a red car", _box(5, 15, 5, 15)),
    "c": ("cat", _box(0, 6, 0, 6)),
    "d": ("cat", _box(10, 18, 10, 18)),
    "e": ("a red car", _box(0, 10, 0, 20)),
    "g": ("cat", _box(1, 5, 1, 5)),  # annotated, never indexed
}
# image -> regions as ((cosine with "cat", cosine with "a red car"), mask); an image scores its best region.
PLANTED = {
    "a": [((0.60, 0.59), INSTANCE["a"][1])],
    "b": [((0.50, 0.58), INSTANCE["b"][1])],
    "c": [((0.40, 0.20), _box(12, 20, 12, 20)), ((0.10, 0.05), INSTANCE["c"][1])],  # best region misses
    "d": [((0.20, 0.10), INSTANCE["d"][1])],
    "e": [((0.30, 0.55), _box(0, 10, 0, 8))],  # IoU 0.4 with the car
    "f": [((0.65, 0.65), _box(0, 20, 0, 20))],  # indexed but not annotated: outside the corpus
}
# Hand-computed from the rankings above (|R_q|: cat a, c, d; car b, e):
#   cat: a b c e d -> image relevance 1 0 1 0 1 -> AP (1 + 2/3 + 3/5) / 3; objects 1 0 0 0 1 -> (1 + 2/5) / 3
#   car: a b e c d -> image relevance 0 1 1 0 0 -> AP (1/2 + 2/3) / 2;     objects 0 1 0 0 0 -> (1/2) / 2
CAT_AP, CAT_AP_OBJECT = (1 + 2 / 3 + 3 / 5) / 3, (1 + 2 / 5) / 3
CAR_AP, CAR_AP_OBJECT = (1 / 2 + 2 / 3) / 2, (1 / 2) / 2


def _with_cosines(queries: np.ndarray, cosines, rng: np.random.Generator) -> np.ndarray:
    """A unit vector with the given cosines to each (unit) query: the least-norm solution in their span,
    completed to unit length by a random direction orthogonal to it."""
    in_span = queries.T @ np.linalg.solve(queries @ queries.T, np.asarray(cosines))
    assert np.linalg.norm(in_span) < 1, "these cosines are not reachable together"
    other = rng.standard_normal(queries.shape[1])
    other -= queries.T @ np.linalg.lstsq(queries.T, other, rcond=None)[0]
    return in_span + np.sqrt(1 - in_span @ in_span) * other / np.linalg.norm(other)


def build_planted(tmp_path):
    """The planted index (a LanceDB directory under tmp_path) and its COCO-format annotations file."""
    preset = get_preset("tiny")
    queries = alpha_clip_encoder(preset, device="cpu").embed_texts(list(QUERIES)).double().numpy()
    store = IndexStore.open(str(tmp_path / "db"), fingerprint=preset.fingerprint, embed_dim=embedding_dim(preset.alpha_clip))
    rng = np.random.default_rng(0)
    images, regions = [], []
    for name, planted_regions in PLANTED.items():
        image_id = hashlib.sha256(name.encode()).hexdigest()
        images.append({"image_id": image_id, "uri": str(tmp_path / "photos" / f"{name}.png"), "status": "ok",
                       "width": SIZE, "height": SIZE, "embedding": np.ones(queries.shape[1], np.float32)})
        for n, (cosines, mask) in enumerate(planted_regions):
            regions.append({"region_id": f"{image_id}:{n}", "image_id": image_id, "rle": mask,
                            "bbox": rle_codec.bbox(mask), "area": rle_codec.area(mask), "predicted_iou": 0.9,
                            "stability_score": 0.9,
                            "embedding": _with_cosines(queries, cosines, rng).astype(np.float32)})
    store.commit(images, regions)

    ids = {name: index + 1 for index, name in enumerate("abcdeg")}
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "a red car"}, {"id": 3, "name": "zebra"}]
    category_of = {c["name"]: c["id"] for c in categories}
    annotations = {
        "images": [{"id": i, "file_name": f"photos/{name}.png", "height": SIZE, "width": SIZE}
                   for name, i in ids.items()],
        "annotations": [{"id": n, "image_id": ids[name], "category_id": category_of[query], "iscrowd": 0,
                         "segmentation": mask, "bbox": rle_codec.bbox(mask)}
                        for n, (name, (query, mask)) in enumerate(INSTANCE.items())],
        "categories": categories,
    }
    # One instance as a polygon, the way most COCO annotations come: the same square as its RLE.
    annotations["annotations"][0]["segmentation"] = [[2, 2, 10, 2, 10, 10, 2, 10]]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    return str(tmp_path / "db"), path
