"""The retrieval evaluation end to end, on an index whose rankings are planted.

The tiny preset's embeddings are random, so the index is written directly: each region embedding is
built to have chosen cosines with the tiny text embeddings of the two queries, which fixes every
ranking; the masks are chosen to match the ground truth exactly, partly or not at all.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from maskdex.jobs.cli import main
from maskdex.operators.common import rle as rle_codec
from maskdex.operators.registry.presets import alpha_clip_encoder, embedding_dim, get_preset
from maskdex.pipelines.evaluation.retrieval import evaluate_retrieval, load_annotations, match_images
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


@pytest.fixture
def planted(tmp_path):
    preset = get_preset("tiny")
    queries = alpha_clip_encoder(preset, device="cpu").embed_texts(list(QUERIES)).double().numpy()
    store = IndexStore.open(str(tmp_path / "db"), models=preset.fingerprint, embed_dim=embedding_dim(preset.alpha_clip))
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


def test_cli_report_matches_hand_computed_values(planted, tmp_path, capsys):
    db, annotations = planted
    out = tmp_path / "report"
    assert main(["eval", "retrieval", "--db", db, "--annotations", str(annotations), "--out", str(out)]) == 0
    assert "mAP@50" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["corpus_images"] == 5 and results["missing_images"] == 1
    assert results["missing_examples"] == ["photos/g.png"]
    assert results["queries"] == 2 and results["queries_without_relevant"] == 1
    metrics = results["metrics"]
    assert metrics["mAP@50"] == pytest.approx((CAT_AP + CAR_AP) / 2)
    assert metrics["mAP@50@50"] == pytest.approx((CAT_AP_OBJECT + CAR_AP_OBJECT) / 2)
    assert (metrics["recall@1"], metrics["recall@5"], metrics["recall@10"]) == (0.5, 1.0, 1.0)
    per_query = {q["query"]: q for q in results["per_query"]}
    assert [r["file_name"] for r in per_query["cat"]["ranked"]] == [f"photos/{n}.png" for n in "abced"]
    assert per_query["cat"]["ap"] == pytest.approx(CAT_AP) and per_query["a red car"]["ap"] == pytest.approx(CAR_AP)
    report = (out / "report.md").read_text()
    assert f"| mAP@50 | {100 * (CAT_AP + CAR_AP) / 2:.1f} |" in report and "definitions are ours" in report


def test_k_cuts_the_ranking(planted):
    db, annotations = planted
    evaluation = evaluate_retrieval(db, annotations, k=2)
    # Images, cat: 1 0 -> 1 / min(3, 2); car: 0 1 -> (1/2) / 2. Objects: the same (a and b match exactly).
    assert evaluation.metrics() == pytest.approx({"mAP@2": (0.5 + 0.25) / 2, "mAP@2@50": (0.5 + 0.25) / 2,
                                                  "recall@1": 0.5})


def test_annotation_and_matching_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_annotations(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match="no annotations"):
        load_annotations(bad)
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg", "height": 4, "width": 4}],
                               "categories": [{"id": 1, "name": "x"}],
                               "annotations": [{"image_id": 2, "category_id": 1, "segmentation": []}]}))
    with pytest.raises(ValueError, match=r"annotations\[0\]: image_id 2"):
        load_annotations(bad)
    images = {1: {"file_name": "val/x.jpg"}, 2: {"file_name": "y.jpg"}}
    assert match_images(images, {"id1": "/data/val/x.jpg", "id2": "/data/train/x.jpg"}) == {1: "id1"}
    with pytest.raises(ValueError, match="matches several indexed images"):
        match_images({2: {"file_name": "y.jpg"}}, {"i": "/a/y.jpg", "j": "/b/y.jpg"})
