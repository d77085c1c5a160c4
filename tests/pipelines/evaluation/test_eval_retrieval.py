"""The retrieval evaluation end to end, on an index whose rankings are planted (tests/support/planted_retrieval.py)."""

from __future__ import annotations

import json

import pytest

from maskdex.jobs.cli import main
from maskdex.pipelines.evaluation.retrieval import evaluate_retrieval, load_annotations, match_images
from tests.support.planted_retrieval import CAR_AP, CAR_AP_OBJECT, CAT_AP, CAT_AP_OBJECT


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
